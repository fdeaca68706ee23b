//! [`Realtime`]: what realtime keeps for the whole server. A leaf: it names the engine and the
//! connect limiter, and no handler.

use std::sync::Arc;

use super::{
    engine::Engine,
    limits::{AppConnections, ConnectLimiter},
};
use crate::config::Config;

/// Realtime state shared by every request and connection.
#[derive(Clone)]
pub struct Realtime {
    pub engine: Engine,
    pub connects: Arc<ConnectLimiter>,
    /// Open connections per app, for `max_connections`.
    pub app_connections: Arc<AppConnections>,
}

impl Realtime {
    pub fn new(config: &Config) -> Self {
        let limits = &config.realtime;
        Self {
            engine: Engine::new(config),
            connects: Arc::new(ConnectLimiter::new(
                limits.connects_per_ip,
                limits.connect_window,
            )),
            app_connections: Arc::default(),
        }
    }
}
