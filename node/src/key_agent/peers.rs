//! The mesh's peer list from the keyserver (`GET /v1/peers`, with the identity
//! certificate), checked, kept and applied (see [`crate::mesh`]).

use std::path::Path;
use std::time::Duration;

use cairn_keys::mesh::PeersResponse;
use cairn_keys::Clock;

use super::state::AgentState;
use super::{answer, renew, AgentError};

/// Ask the keyserver the node enrolled with for the other nodes of the mesh.
pub fn fetch(root: &Path, state: &AgentState, timeout: Duration, clock: &Clock) -> Result<PeersResponse, AgentError> {
    let ks = renew::identified(root, state, timeout, clock)?;
    let (status, body) = ks.get("/v1/peers")?;
    answer(status, &body)
}
