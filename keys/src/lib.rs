//! What Cairn's key agent (on every node) and its keyserver (on an admin machine or in the
//! cluster) agree on, with no IO so both sides, the tests and the fuzzers share it:
//!
//! - [`token`]: the one-time bootstrap token a config drive carries (`ck1.…`), its typo
//!   check, and the hash the keyserver keeps instead of the secret;
//! - [`schedule`]: when a certificate is renewed (a third of its life or the outage budget
//!   before it ends, jittered per node) and how failures back off;
//! - [`audit`]: the keyserver's append-only log of decisions, each line chained to the one
//!   before by its hash;
//! - [`profiles`]: which certificates a node of a role gets, with every name in them taken
//!   from the keyserver's record of the node;
//! - [`wire`]: the JSON the agent and the keyserver exchange;
//! - [`clock`]: the wall clock both read, which tests set by hand;
//! - [`ssh`]: OpenSSH certificates for ed25519 keys, as the SSH CAs sign them.
//!
//! The design, with the evidence behind it, is `shared/design/keys.md`; the agent never
//! links the keyserver, and neither links the image builder.

pub mod audit;
pub mod clock;
pub mod harness;
pub mod mesh;
pub mod pem;
pub mod profiles;
pub mod schedule;
pub mod ssh;
pub mod token;
pub mod wire;

pub use clock::Clock;
pub use token::{Token, TokenError};
