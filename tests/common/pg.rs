//! A throwaway PostgreSQL server for integration tests.
//!
//! Each test process that asks for one gets its own server: `initdb` into
//! `<temp>/gaze-pg-<pid>`, a free TCP port on 127.0.0.1, trust authentication for a superuser
//! named `gaze`, and durability switched off since nothing here has to survive a crash.
//!
//! The server is a direct child of the test process and receives SIGINT (fast shutdown) when
//! the process exits, however it exits. The process's own directory stays behind after exit:
//! the server is still shutting down at that moment, so the process cannot remove it. The next
//! start removes every `gaze-pg-<pid>` directory whose process is gone, so killed or finished
//! runs do not pile up.
//!
//! PostgreSQL refuses to run as root; as root, `initdb` and `postgres` run as `nobody`.
//!
//! Environment:
//! - `GAZE_PG_BIN`: the folder holding `initdb` and `postgres` (default: `pg_config --bindir`,
//!   else the newest `/usr/lib/postgresql/*/bin`).
//! - `GAZE_REQUIRE_POSTGRES=1`: a missing PostgreSQL fails the test instead of skipping it.

#![allow(dead_code)]

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The superuser `initdb` creates; every URL connects as this role.
pub const SUPERUSER: &str = "gaze";

const DIR_PREFIX: &str = "gaze-pg-";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts: a second one covers a port taken between probing and binding.
const ATTEMPTS: usize = 2;
/// uid and gid of `nobody` when the passwd database has no entry for it.
const NOBODY_ID: u32 = 65534;

/// A PostgreSQL server for this test process, started once (initdb into a temp dir, a free
/// TCP port on 127.0.0.1, trust auth for a superuser named `gaze`), stopped when the process
/// exits.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    next_database: AtomicU32,
}

/// Why there is no server.
enum StartError {
    /// No PostgreSQL binaries: tests skip, unless GAZE_REQUIRE_POSTGRES=1.
    NotInstalled(String),
    /// PostgreSQL is installed but the server could not be set up: a broken setup must not
    /// pass for a missing one, so this always fails the test.
    Failed(String),
}

impl StartError {
    fn reason(&self) -> &str {
        match self {
            StartError::NotInstalled(reason) | StartError::Failed(reason) => reason,
        }
    }
}

static SERVER: OnceLock<Result<PgServer, StartError>> = OnceLock::new();

impl PgServer {
    /// The process's server, started on first use. Err(reason) when PostgreSQL is not
    /// installed (no binaries found): then the caller skips. A server that cannot start
    /// although PostgreSQL is installed is an Err too, with the server's log in the reason.
    pub fn shared() -> Result<&'static PgServer, String> {
        server().map_err(|e| e.reason().to_string())
    }

    /// A new empty database on it (unique name per call, gaze_test_<n>), returned as a
    /// connection URL `postgres://gaze@127.0.0.1:PORT/NAME`.
    pub fn fresh_database(&self) -> String {
        let name = format!(
            "gaze_test_{}",
            self.next_database.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}"));
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        self.url(&name)
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The server's data directory (inside [`PgServer::dir`]).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The temp directory of this run: data directory, socket and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// For tests: the URL of a fresh database, or None after printing to stderr
/// "skipped: <test name>: <reason>" when there is no PostgreSQL. When the environment variable
/// GAZE_REQUIRE_POSTGRES is set to 1, a missing PostgreSQL is a panic instead (CI sets it so
/// these tests can never be skipped silently there). A PostgreSQL that is installed but does
/// not start is always a panic.
pub fn database_or_skip(test: &str) -> Option<String> {
    match server() {
        Ok(server) => Some(server.fresh_database()),
        Err(StartError::NotInstalled(reason)) => {
            if std::env::var("GAZE_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("{test}: GAZE_REQUIRE_POSTGRES=1 but {reason}");
            }
            eprintln!("skipped: {test}: {reason}");
            None
        }
        Err(StartError::Failed(reason)) => {
            panic!("{test}: the PostgreSQL test server did not start: {reason}")
        }
    }
}

fn server() -> Result<&'static PgServer, &'static StartError> {
    SERVER.get_or_init(start).as_ref()
}

fn start() -> Result<PgServer, StartError> {
    let bin_dir = find_bin_dir().map_err(StartError::NotInstalled)?;
    let run_as = unprivileged_user();
    let temp = std::env::temp_dir();
    remove_stale_dirs(&temp);

    let dir = temp.join(format!("{DIR_PREFIX}{}", std::process::id()));
    make_run_dir(&dir, run_as)
        .map_err(|e| StartError::Failed(format!("cannot prepare {}: {e}", dir.display())))?;
    let data_dir = dir.join("data");
    init_cluster(&bin_dir, &dir, &data_dir, run_as).map_err(StartError::Failed)?;

    let mut failures = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match launch(&bin_dir, &dir, &data_dir, run_as) {
            Ok(port) => {
                return Ok(PgServer {
                    port,
                    dir,
                    data_dir,
                    bin_dir,
                    next_database: AtomicU32::new(0),
                })
            }
            Err(e) => failures.push(format!("attempt {attempt}: {e}")),
        }
    }
    Err(StartError::Failed(failures.join("\n")))
}

/// `$GAZE_PG_BIN`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`;
/// only a folder that holds `initdb` counts.
fn find_bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("GAZE_PG_BIN") {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(format!(
                "no PostgreSQL: GAZE_PG_BIN={} holds no initdb",
                dir.display()
            ))
        };
    }
    // pg_config may come from the client library package alone, without a server: then its
    // folder has no initdb and the search goes on.
    if let Ok(out) = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        if out.status.success() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("initdb").is_file() {
                return Ok(dir);
            }
        }
    }
    newest_packaged_bin_dir(Path::new("/usr/lib/postgresql")).ok_or_else(|| {
        "no PostgreSQL: no initdb in $GAZE_PG_BIN, `pg_config --bindir` or \
         /usr/lib/postgresql/*/bin"
            .to_string()
    })
}

/// Debian's layout: one `<root>/<version>/bin` per installed major version.
fn newest_packaged_bin_dir(root: &Path) -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir(root).ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(parse_version) else {
            continue;
        };
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() {
            continue;
        }
        if best.as_ref().is_none_or(|(newest, _)| version > *newest) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
}

/// "15" -> [15], "9.6" -> [9, 6]; anything else is not a version folder.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

#[derive(Clone, Copy)]
struct RunAs {
    uid: libc::uid_t,
    gid: libc::gid_t,
}

/// `nobody` when running as root (PostgreSQL refuses root), else None: run as ourselves.
fn unprivileged_user() -> Option<RunAs> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    // SAFETY: the name is a valid C string; the entry is read at once, before any other
    // passwd call could reuse its static storage (this runs once, inside the OnceLock).
    let entry = unsafe { libc::getpwnam(c"nobody".as_ptr()) };
    if entry.is_null() {
        return Some(RunAs {
            uid: NOBODY_ID,
            gid: NOBODY_ID,
        });
    }
    // SAFETY: non-null, so it points to a valid passwd entry.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Some(RunAs { uid, gid })
}

/// Removes `gaze-pg-<pid>` directories whose process is gone: runs that were killed, or that
/// ended while their server was still shutting down. A directory with our own pid belongs to
/// an earlier process that had the same pid, so it goes too.
fn remove_stale_dirs(temp: &Path) {
    let own = std::process::id();
    let Ok(entries) = fs::read_dir(temp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own || !Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: a directory that cannot be removed only costs disk space.
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn make_run_dir(dir: &Path, run_as: Option<RunAs>) -> io::Result<()> {
    DirBuilder::new().mode(0o700).create(dir)?;
    if let Some(user) = run_as {
        std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
    }
    Ok(())
}

/// Drops to `run_as` (when set) in the child before exec; with `die_with_parent`, the child
/// also gets SIGINT when the thread that spawned it ends.
fn configure(cmd: &mut Command, dir: &Path, run_as: Option<RunAs>, die_with_parent: bool) {
    // A root-owned working directory may be closed to `nobody`; the run dir is its own.
    cmd.current_dir(dir).stdin(Stdio::null());
    let hook = move || -> io::Result<()> {
        if let Some(user) = run_as {
            // Supplementary groups first: root's would otherwise survive the uid change.
            // SAFETY: plain system calls, async-signal-safe, between fork and exec.
            unsafe {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(user.gid) != 0
                    || libc::setuid(user.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if die_with_parent {
            // After the uid change: changing credentials clears the parent-death signal.
            // SAFETY: a plain system call, async-signal-safe, between fork and exec.
            if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT as libc::c_ulong) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls and allocates nothing.
    unsafe {
        cmd.pre_exec(hook);
    }
}

fn init_cluster(
    bin_dir: &Path,
    dir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
) -> Result<(), String> {
    let log_path = dir.join("initdb.log");
    let log = log_file(&log_path)?;
    let mut cmd = Command::new(bin_dir.join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .args(["-U", SUPERUSER])
        .args(["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync"])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    configure(&mut cmd, dir, run_as, false);
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin_dir.join("initdb").display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "initdb failed ({status}); its output:\n{}",
            read_log(&log_path)
        ))
    }
}

/// Starts `postgres` on a free port and waits until it accepts connections.
fn launch(
    bin_dir: &Path,
    dir: &Path,
    data_dir: &Path,
    run_as: Option<RunAs>,
) -> Result<u16, String> {
    let port = free_port()?;
    let log_path = dir.join(format!("postgres-{port}.log"));
    let log = log_file(&log_path)?;
    let mut cmd = Command::new(bin_dir.join("postgres"));
    cmd.arg("-D")
        .arg(data_dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args(["-c", "listen_addresses=127.0.0.1"])
        .args(["-c", "fsync=off"])
        .args(["-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .args(["-c", "max_connections=200"])
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    configure(&mut cmd, dir, run_as, true);
    let (pid, exited) = spawn_kept(cmd)?;
    wait_ready(port, pid, &exited, &log_path)?;
    Ok(port)
}

fn free_port() -> Result<u16, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot find a free port on 127.0.0.1: {e}"))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| format!("cannot read the probed port: {e}"))
}

type ExitSlot = Arc<Mutex<Option<ExitStatus>>>;

/// Spawns `cmd` from a thread that never ends and returns the child's pid, with a slot that
/// receives its exit status should it exit. The parent-death signal fires when the spawning
/// *thread* ends, and the test harness ends each test's thread, so the spawning thread must
/// live as long as the process.
fn spawn_kept(mut cmd: Command) -> Result<(u32, ExitSlot), String> {
    let exited: ExitSlot = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&exited);
    let (sender, receiver) = mpsc::channel();
    thread::Builder::new()
        .name("gaze-pg-server".into())
        .spawn(move || {
            match cmd.spawn() {
                Ok(mut child) => {
                    let _ = sender.send(Ok(child.id()));
                    if let Ok(status) = child.wait() {
                        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                    }
                }
                Err(e) => {
                    let _ = sender.send(Err(format!("cannot run postgres: {e}")));
                }
            }
            loop {
                thread::park();
            }
        })
        .map_err(|e| format!("cannot start the server's thread: {e}"))?;
    let pid = receiver
        .recv()
        .map_err(|_| "the server's thread ended before spawning postgres".to_string())??;
    Ok((pid, exited))
}

fn wait_ready(port: u16, pid: u32, exited: &ExitSlot, log_path: &Path) -> Result<(), String> {
    let url = format!("postgres://{SUPERUSER}@127.0.0.1:{port}/postgres?connect_timeout=5");
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = *exited.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(format!(
                "postgres exited ({status}) before accepting connections on port {port}; \
                 its log:\n{}",
                read_log(log_path)
            ));
        }
        match postgres::Client::connect(&url, postgres::NoTls) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                // Immediate shutdown, so a retry does not compete with a half-started server.
                // The slot is checked first so a child already reaped is left alone.
                if exited.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGQUIT);
                    }
                }
                return Err(format!(
                    "postgres did not accept connections on port {port} within {}s \
                     (last error: {e}); its log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    read_log(log_path)
                ));
            }
            Err(_) => thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn log_file(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

fn read_log(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}
