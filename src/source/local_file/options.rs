//! The local file's command-line option and its opener: always on.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::LocalFileSource;
use crate::source::Opened;

/// The local file: the JSON file shared by every server process on this machine.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Local file source")]
pub struct LocalFileOptions {
    /// The local registry file, shared by every server process on this machine (and by the
    /// Python ipfs_datasets_py module). Missing folders are created.
    #[arg(
        long,
        env = "PEER_REGISTRY_PATH",
        value_name = "FILE",
        global = true,
        default_value_os_t = default_registry_path()
    )]
    pub registry_path: PathBuf,
}

impl LocalFileOptions {
    /// Opens the file (creating missing folders); a file that cannot be used stops the
    /// server before it starts, with the reason.
    pub fn open(&self) -> Result<Opened, String> {
        let local = LocalFileSource::open(&self.registry_path).map_err(|e| {
            format!(
                "cannot use registry file `{}`: {e}",
                self.registry_path.display()
            )
        })?;
        Ok(Opened::On {
            description: format!("records in {}", local.path().display()),
            source: Arc::new(local),
        })
    }
}

/// The Python module's path: `$XDG_CACHE_HOME/ipfs_datasets_py/peer_registry.json`, or
/// `~/.cache/...` when XDG_CACHE_HOME is unset or not absolute.
pub fn default_registry_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("ipfs_datasets_py").join("peer_registry.json")
}
