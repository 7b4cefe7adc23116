//! Processes of this binary that a bench starts on loopback (Ballista roles, speed and
//! serving processes), each with its log file, all killed when the set is dropped.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Processes a bench started.
pub struct Procs {
    /// Where their logs go (`<name>.log`).
    dir: PathBuf,
    /// Every process, by name.
    children: Vec<(String, Child)>,
}

impl Procs {
    /// An empty set logging under `dir`.
    pub fn new(dir: &Path) -> anyhow::Result<Procs> {
        std::fs::create_dir_all(dir)?;
        Ok(Procs {
            dir: dir.to_path_buf(),
            children: Vec::new(),
        })
    }

    /// Start this binary as `name` with `args` and `env`.
    pub fn spawn(
        &mut self,
        name: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Kill the process `name` and wait for it.
    pub fn kill(&mut self, name: &str) {
        if let Some(i) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(i);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of `name`'s log, for an error message.
    pub fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nothing listens on now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Wait until `address` accepts connections (at most 60 s).
pub fn wait_listening(address: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(address).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {address} after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
