//! API keys: generation and hashing, storage, scopes, and the [`Principal`] extractor that
//! authenticates every REST request.

mod db;
mod keys;
mod principal;
mod scopes;

pub use db::{ApiKey, NewKey, create_key, find_key, list_keys, revoke_key};
pub use keys::{Credential, GeneratedKey};
pub use principal::{ChannelsRead, ChannelsWrite, Principal, Scoped};
pub use scopes::{Scope, ScopeSet};
