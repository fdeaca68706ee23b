//! One value read for `/metrics` at scrape time: what the engine, delivery and the pool report.

/// Whether a sample only grows (a counter) or goes up and down (a gauge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A metric with its value now. A counter's name is its family's, without the `_total` that
/// its sample gets in the exposition.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub value: u64,
}

impl Sample {
    pub const fn counter(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            kind: Kind::Counter,
            help,
            value,
        }
    }

    pub const fn gauge(name: &'static str, help: &'static str, value: u64) -> Self {
        Self {
            name,
            kind: Kind::Gauge,
            help,
            value,
        }
    }
}
