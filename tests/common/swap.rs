//! A real swap file for the memory tests, sized to the machine and removed when dropped, also
//! when the test fails (`swapoff`, then the file).

use std::path::PathBuf;
use std::process::Command;

use tariff_machine_sched::page_out::MachineMemory;

/// Smallest swap file worth making: the tests swap out a few hundred MiB at most.
const MIN_SWAP_BYTES: u64 = 512 << 20;
/// Largest: enough for every test here, small enough to be quick to make.
const MAX_SWAP_BYTES: u64 = 1 << 30;
/// Leave at least this much of the disk free for the other engineers' builds.
const DISK_RESERVE_BYTES: u64 = 8 << 30;

/// An active swap file; `swapoff` and removed on drop.
pub struct SwapFile {
    path: PathBuf,
    /// Bytes of swap it adds.
    pub bytes: u64,
}

impl SwapFile {
    /// Makes and turns on a swap file of 512 MiB–1 GiB (as disk and memory allow), or says why
    /// it cannot (not root, no room, the kernel refused).
    pub fn create() -> Result<SwapFile, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("swap files need root".into());
        }
        let dir = std::env::temp_dir();
        let disk_free = disk_free_bytes(&dir)?;
        let memory = MachineMemory::read().map_err(|e| e.to_string())?;
        let bytes = MAX_SWAP_BYTES
            .min(disk_free.saturating_sub(DISK_RESERVE_BYTES))
            .min(memory.available_bytes / 2);
        if bytes < MIN_SWAP_BYTES {
            return Err(format!(
                "no room for a {} MiB swap file (disk free {} MiB, memory available {} MiB)",
                MIN_SWAP_BYTES >> 20,
                disk_free >> 20,
                memory.available_bytes >> 20
            ));
        }
        let path = dir.join(format!("tariff-test-swap-{}", std::process::id()));
        // From here on the guard removes whatever was made, whatever fails next.
        let swap = SwapFile { path, bytes };
        run("fallocate", &["-l", &bytes.to_string(), swap.path()])?;
        std::fs::set_permissions(
            &swap.path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| e.to_string())?;
        run("mkswap", &[swap.path()])?;
        run("swapon", &[swap.path()])?;
        Ok(swap)
    }

    fn path(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }
}

impl Drop for SwapFile {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(&self.path).status();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs a system tool, turning a failure into its message.
fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Free bytes on the file system holding `dir`.
fn disk_free_bytes(dir: &std::path::Path) -> Result<u64, String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: an all-zero statvfs is a valid out-buffer; `path` is a NUL-terminated string
    // that outlives the call.
    let stat = unsafe {
        let mut stat: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(path.as_ptr(), &mut stat) != 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        stat
    };
    Ok(stat.f_bavail * stat.f_frsize)
}
