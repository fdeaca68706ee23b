//! Realtime channel names and peer ids.

/// What a valid realtime channel name refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    /// All decimal digits: the live channel of the persistent channel with this id.
    Persistent(i64),
    /// Anything else: exists only while someone uses it.
    Ephemeral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    Invalid,
    Reserved,
    /// All digits, but not a persistent channel's id as the API writes it (`042`, `0`).
    NotCanonical,
}

impl NameError {
    /// What to tell the client.
    pub fn message(self) -> &'static str {
        match self {
            Self::Invalid => {
                "realtime channel names are 1-256 characters without control characters"
            }
            Self::Reserved => {
                "realtime channel names starting with _metered/, _internal/ or _system/ are reserved"
            }
            Self::NotCanonical => {
                "an all-digit realtime channel name is a persistent channel's id and must be \
                 written as the API returns it: a positive integer without leading zeros (42, \
                 not 042)"
            }
        }
    }
}

const RESERVED_PREFIXES: [&str; 3] = ["_metered/", "_internal/", "_system/"];

/// 1-256 characters, no control characters (C0, DEL, C1), not under a reserved prefix.
/// An all-digit name must be a canonical positive id (no leading zero), so that one persistent
/// channel never has two live names.
pub fn channel_kind(name: &str) -> Result<ChannelKind, NameError> {
    let length = name.chars().count();
    if !(1..=256).contains(&length) || name.chars().any(char::is_control) {
        return Err(NameError::Invalid);
    }
    if RESERVED_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix))
    {
        return Err(NameError::Reserved);
    }
    if name.bytes().all(|b| b.is_ascii_digit()) {
        return match name.parse::<i64>() {
            Ok(id) if id > 0 && !name.starts_with('0') => Ok(ChannelKind::Persistent(id)),
            _ => Err(NameError::NotCanonical),
        };
    }
    Ok(ChannelKind::Ephemeral)
}

/// 1-128 printable ASCII characters.
pub fn is_peer_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_are_classified() {
        let cases = [
            ("app_abc/room-1", Ok(ChannelKind::Ephemeral)),
            ("42", Ok(ChannelKind::Persistent(42))),
            ("042", Err(NameError::NotCanonical)),
            ("0", Err(NameError::NotCanonical)),
            ("99999999999999999999", Err(NameError::NotCanonical)),
            ("", Err(NameError::Invalid)),
            ("tab\there", Err(NameError::Invalid)),
            ("del\u{7f}", Err(NameError::Invalid)),
            ("c1\u{85}", Err(NameError::Invalid)),
            ("_metered/x", Err(NameError::Reserved)),
            ("_internal/x", Err(NameError::Reserved)),
            ("_system/x", Err(NameError::Reserved)),
            ("_other/x", Ok(ChannelKind::Ephemeral)),
            ("Ünïcode ok", Ok(ChannelKind::Ephemeral)),
        ];
        for (name, expected) in cases {
            assert_eq!(channel_kind(name), expected, "{name:?}");
        }
        assert_eq!(channel_kind(&"x".repeat(256)), Ok(ChannelKind::Ephemeral));
        assert_eq!(channel_kind(&"x".repeat(257)), Err(NameError::Invalid));
    }

    #[test]
    fn peer_ids_are_printable_ascii() {
        assert!(is_peer_id("u_alice_123"));
        assert!(is_peer_id(&"p".repeat(128)));
        for bad in ["", "tab\t", "é", &"p".repeat(129)] {
            assert!(!is_peer_id(bad), "{bad:?}");
        }
    }
}
