//! The definition file's shape as TOML, before any check: what serde reads, with spans
//! kept so every error can name its line.

use super::size::Size;
use serde::Deserialize;
use toml::Spanned;

/// The file as written (serde's view); see [`Definition`] for the validated form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawDefinition {
    pub(crate) version: Spanned<u32>,
    pub(crate) image: RawImage,
    pub(crate) root: RawRoot,
    #[serde(default)]
    pub(crate) kernel: RawKernel,
    #[serde(default)]
    pub(crate) initrd: RawInitrd,
    #[serde(default)]
    pub(crate) kubelet: Option<RawKubelet>,
    #[serde(default)]
    pub(crate) boot: RawBoot,
    #[serde(default)]
    pub(crate) partitions: RawPartitions,
    #[serde(default)]
    pub(crate) squashfs: RawSquashfs,
    #[serde(default)]
    pub(crate) signing: RawSigning,
    #[serde(default)]
    pub(crate) output: RawOutput,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawImage {
    pub(crate) name: Spanned<String>,
    pub(crate) version: Spanned<String>,
    #[serde(default)]
    pub(crate) architecture: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawRoot {
    #[serde(default)]
    pub(crate) source: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) debian: Option<Spanned<RawDebian>>,
    #[serde(default)]
    pub(crate) overlays: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) units: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) node_agent: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) keyserver: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawDebian {
    pub(crate) suite: Spanned<String>,
    #[serde(default)]
    pub(crate) mirror: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) security_mirror: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) components: Option<Vec<Spanned<String>>>,
    pub(crate) packages: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) kernel: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) lock: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) package_sources: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) fallback_sources: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawInitrd {
    #[serde(default)]
    pub(crate) drivers: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) dracut_modules: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKubelet {
    #[serde(default)]
    pub(crate) path: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) url: Option<Spanned<String>>,
    pub(crate) sha256: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawKernel {
    #[serde(default)]
    pub(crate) image: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) initrd: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) cmdline: Vec<Spanned<String>>,
    #[serde(default)]
    pub(crate) stub: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) modules: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) module_classes: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) extra_modules: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawBoot {
    #[serde(default)]
    pub(crate) systemd_boot: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) timeout: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawPartitions {
    pub(crate) esp_size: Option<Spanned<Size>>,
    pub(crate) root_size: Option<Spanned<Size>>,
    pub(crate) state_size: Option<Spanned<Size>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSquashfs {
    pub(crate) compression: Option<Spanned<String>>,
    pub(crate) level: Option<Spanned<u32>>,
    pub(crate) block_size: Option<Spanned<Size>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawSigning {
    pub(crate) key: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) node_config_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct RawOutput {
    pub(crate) formats: Option<Spanned<Vec<String>>>,
}
