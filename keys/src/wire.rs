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
    /// The node's ed25519 SSH host key (public line), for a host certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// The node's WireGuard public key (base64), for the mesh's peer lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_key: Option<String>,
}

/// `POST /v1/renew`, over TLS with the node's identity certificate as its client
/// certificate: new keys for some or all of the node's certificates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    /// The generation of the certificates the node holds (the last answer's). A node that
    /// sends an older one is not the only holder of its identity key: the keyserver
    /// refuses and raises an alert.
    pub generation: u64,
    /// One PEM certificate signing request per profile to renew, each for a new key.
    pub csrs: BTreeMap<String, String>,
    /// The node's ed25519 SSH host key (public line), for a new host certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_key: Option<String>,
    /// The node's WireGuard public key (base64), for the mesh's peer lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_key: Option<String>,
}

/// The answer to an enrollment or a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollResponse {
    /// The node's name, as the keyserver knows it.
    pub node: String,
    /// Its role.
    pub role: Role,
    /// The generation of these certificates: 1 at enrollment, one more at each renewal.
    pub generation: u64,
    /// One certificate per profile: the leaf, then the CA that signed it (PEM).
    pub certs: BTreeMap<String, String>,
    /// Each CA's certificate by CA name (PEM), to trust peers with.
    pub bundles: BTreeMap<String, String>,
    /// The keyserver's clock (Unix seconds), for the node to compare its own with.
    pub server_time: u64,
    /// The SSH host certificate for the key the request sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_host_cert: Option<String>,
    /// The SSH user CA's public key line, for sshd's `TrustedUserCAKeys`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_user_ca: Option<String>,
}

/// A refusal: a code the agent acts on, a sentence for people, and whether trying again
/// later can help.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// `token_unknown`, `token_invalid`, `token_expired`, `token_used`, `token_revoked`,
    /// `role_mismatch`, `bad_csr`, `bad_request`, `unavailable`, `not_identified`,
    /// `identity_expired_beyond_grace`, `generation_mismatch`, `node_locked`, `identity_replaced`,
    /// `node_unknown`.
    pub code: String,
    /// What happened.
    pub message: String,
    /// Whether a later try may succeed.
    pub retry: bool,
}
