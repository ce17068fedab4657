//! What happens to a finished build: checking it ([`verify`]), publishing it for nodes
//! to update from ([`publish`]), and writing node config drives ([`configdrive`]).

pub mod configdrive;
pub mod publish;
pub mod verify;
