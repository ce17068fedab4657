//! What the key agent and the keyserver send each other (JSON under `/v1/`). Unknown fields
//! are refused both ways, so a mistake on either side is found at once rather than ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::profiles::Role;

/// `POST /v1/enroll`: a new node's first request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The bootstrap token from the node's config drive.
    pub token: String,
    /// The role the node's config gives it.
    pub role: String,
    /// One PEM certificate signing request per profile of the role, by profile name; the
    /// `identity` key is the one the token is bound to.
    pub csrs: BTreeMap<String, String>,
}

/// The answer to an enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The node's name, as the keyserver knows it.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// One certificate per profile: the leaf, then the CA that signed it (PEM).
    pub certs: BTreeMap<String, String>,
    /// Each CA's certificate by CA name (PEM), to trust peers with.
    pub bundles: BTreeMap<String, String>,
    /// The keyserver's clock (Unix seconds), for the node to compare its own with.
    pub server_time: u64,
}

/// A refusal: a code the agent acts on, a sentence for people, and whether trying again
/// later can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// `token_unknown`, `token_invalid`, `token_expired`, `token_used`, `token_revoked`,
    /// `role_mismatch`, `bad_csr`, `bad_request`, `unavailable`.
    pub code: String,
    /// What happened.
    pub message: String,
    /// Whether a later try may succeed.
    pub retry: bool,
}
