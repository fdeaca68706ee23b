//! Scopes a key may carry, and the set of them a key holds.

use std::{fmt, str::FromStr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    ChannelsRead,
    ChannelsWrite,
    Publish,
    Subscribe,
    Presence,
    Send,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::ChannelsRead,
        Scope::ChannelsWrite,
        Scope::Publish,
        Scope::Subscribe,
        Scope::Presence,
        Scope::Send,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ChannelsRead => "channels:read",
            Scope::ChannelsWrite => "channels:write",
            Scope::Publish => "publish",
            Scope::Subscribe => "subscribe",
            Scope::Presence => "presence",
            Scope::Send => "send",
            Scope::Admin => "admin",
        }
    }

    /// The actions of the realtime surface, as opposed to REST scopes.
    pub const REALTIME: [Scope; 4] = [
        Scope::Publish,
        Scope::Subscribe,
        Scope::Presence,
        Scope::Send,
    ];

    pub fn is_realtime(self) -> bool {
        Self::REALTIME.contains(&self)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Scope::ALL
            .into_iter()
            .find(|scope| scope.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Scope::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown scope `{s}` (known: {})", known.join(", "))
            })
    }
}

/// The scopes one key holds. `channels:write` implies `channels:read`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScopeSet(u8);

impl ScopeSet {
    pub fn contains(self, scope: Scope) -> bool {
        let granted = match scope {
            Scope::ChannelsRead => {
                self.0 & (Scope::ChannelsRead.bit() | Scope::ChannelsWrite.bit())
            }
            other => self.0 & other.bit(),
        };
        granted != 0
    }

    /// Only the realtime actions of this set.
    pub fn realtime(self) -> ScopeSet {
        self.iter().filter(|s| s.is_realtime()).collect()
    }

    pub fn names(self) -> Vec<&'static str> {
        self.iter().map(Scope::as_str).collect()
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL
            .into_iter()
            .filter(move |s| self.0 & s.bit() != 0)
    }

    /// Parses stored scope names; unknown names are ignored so that a newer migration's scopes
    /// never lock an older binary out.
    pub fn from_stored(names: &[String]) -> Self {
        names.iter().filter_map(|n| n.parse().ok()).collect()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, s| bits | s.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_implies_read_but_nothing_else() {
        let set: ScopeSet = [Scope::ChannelsWrite].into_iter().collect();
        assert!(set.contains(Scope::ChannelsRead));
        assert!(set.contains(Scope::ChannelsWrite));
        assert!(!set.contains(Scope::Publish));
        let read: ScopeSet = [Scope::ChannelsRead].into_iter().collect();
        assert!(!read.contains(Scope::ChannelsWrite));
    }

    #[test]
    fn scope_names_round_trip() {
        for scope in Scope::ALL {
            assert_eq!(scope.as_str().parse::<Scope>(), Ok(scope));
        }
        assert!("channels:delete".parse::<Scope>().is_err());
    }
}
