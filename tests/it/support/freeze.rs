//! A file system the test can freeze (`fsfreeze`): an ext4 image on a loop device mounted at a
//! directory of the test's own. Every write blocks while it is frozen, as on a hung disk or a
//! stuck network file system. Thawed and unmounted on drop, whatever happened.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct FreezableFs {
    dir: PathBuf,
}

impl FreezableFs {
    /// None when this process cannot mount (not root, no loop devices).
    pub fn mount(image: &Path, dir: &Path) -> Option<FreezableFs> {
        let run = |cmd: &str, args: &[&OsStr]| {
            Command::new(cmd)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        let file = std::fs::File::create(image).ok()?;
        file.set_len(64 * 1024 * 1024).ok()?;
        drop(file);
        let ok = run(
            "mkfs.ext4",
            &["-q".as_ref(), "-F".as_ref(), image.as_os_str()],
        ) && run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                image.as_os_str(),
                dir.as_os_str(),
            ],
        );
        ok.then(|| FreezableFs {
            dir: dir.to_path_buf(),
        })
    }

    pub fn freeze(&self, on: bool) {
        let status = Command::new("fsfreeze")
            .arg(if on { "--freeze" } else { "--unfreeze" })
            .arg(&self.dir)
            .status()
            .expect("run fsfreeze");
        assert!(status.success(), "fsfreeze {on}");
    }
}

impl Drop for FreezableFs {
    fn drop(&mut self) {
        // A frozen file system left behind would hang every process that writes to it.
        let _ = Command::new("fsfreeze")
            .arg("--unfreeze")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("umount")
            .args(["-l", "-d"])
            .arg(&self.dir)
            .status();
    }
}
