//! `cairn-node update`: install a signed release into the inactive A/B slot.
//!
//! The order of steps is the safety argument; each one holds if the node loses power
//! right after it:
//!
//! 1. **Look before touching anything.** Find the running slot (the root partition whose
//!    UUID is the first half of the command line's `roothash=`), the ESP and its UKIs.
//!    Refuse while the running version is not blessed yet (its UKI still carries a boot
//!    counter): the other slot is its fallback.
//! 2. **Check the bundle's signature** with the key baked into the running image, its
//!    image name, and that its version is newer (unless forced) and has not already
//!    failed here (unless forced), before a byte is written.
//! 3. **Make the inactive slot unreachable**: remove every UKI that does not boot the
//!    running root hash (they can only point at the inactive slot or at nothing), then
//!    give the slot's partitions UUIDs derived from a purpose string and the *no-auto*
//!    attribute. No UKI and no discovery can open it now.
//! 4. **Stream** root and verity payloads straight into the slot's partitions and the UKI
//!    into a temporary file on the ESP, hashing as they pass; nothing is downloaded first.
//!    Then check every hash, that the written hash tree's top block gives the signed root
//!    hash, and that the UKI's `roothash=` is that hash.
//! 5. **Name the slot**: its partition UUIDs become the halves of the new root hash and
//!    *no-auto* is cleared.
//! 6. **Install the UKI** as `EFI/Linux/cairn_<version>+3.efi` by renaming the temporary
//!    file: systemd-boot now prefers the new version and counts its tries.
//!
//! The running slot's partitions and UKI are never written. A crash before step 6 leaves a
//! slot nothing boots; running the update again starts over at step 1.
//!
//! Blessing is systemd's: `systemd-bless-boot.service` renames the UKI to
//! `cairn_<version>.efi` once `boot-complete.target` is reached, which Cairn's health
//! gates are ordered before. A gate that fails on a counted boot records why (under
//! `/var/lib/cairn/update/`) and reboots, so systemd-boot spends a try; after three, it
//! boots the previous version again.

mod auto;
mod boot;
mod fetch;
mod install;
mod record;
mod slots;
mod status;
mod trust;

use std::io;
use std::path::{Path, PathBuf};

use cairn_signing::bundle::BundleError;

pub use auto::{auto, auto_at, reboot_by_policy, AutoOutcome};
pub use boot::{
    boot_deadline, counted_boot, gate_failed, on_deadline, on_gate_failure, watch_deadline, DEFAULT_BOOT_DEADLINE,
};
pub use fetch::{fetch_small, http_agent, open_source, open_source_within, BUNDLE_DEADLINE, INDEX_DEADLINE};
pub use install::{install, Installed, Options};
pub use record::{failed_versions, record_failure};
pub use slots::{entries, find_esp, uki_root_hash, Entry, SlotParts, Target};
pub use status::status;
pub use trust::{lock_updates, trust_dir, trusted_keys};

/// The release key baked into every image.
pub const RELEASE_KEY: &str = "/usr/share/cairn/release.pub";
/// Where the agent keeps what it knows about updates (on the state partition).
pub const STATE_DIR: &str = "/var/lib/cairn/update";
/// Tries systemd-boot gives a new version.
pub const TRIES: u32 = 3;
/// Where a UKI is written before it is complete and checked.
const PARTIAL: &str = "EFI/Linux/cairn-update.partial";
/// The EFI variable systemd-boot sets when it boots a counted entry.
pub const BOOT_COUNT_VAR: &str = "/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Why an update did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The running system is not what an update needs (not a Cairn A/B disk, no ESP, …).
    #[error("{0}")]
    System(String),
    /// IO on a named file or device.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or device.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Fetching the bundle.
    #[error("fetching {url}: {detail}")]
    Fetch {
        /// The source.
        url: String,
        /// What went wrong.
        detail: String,
    },
    /// The bundle is bad (signature, structure, a hash).
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A sound bundle this node must not install.
    #[error("{0}")]
    Refused(String),
}

fn io_at(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> UpdateError {
    let path = path.to_owned();
    move |source| UpdateError::Io { what, path, source }
}

pub use cairn_signing::bundle::compare_versions;
