//! A real PostgreSQL on 127.0.0.1 for the tests: `initdb` (as the `postgres` user when we are
//! root: it refuses root) into a temp dir, `pg_ctl start`; one server for the tests that run
//! together, a database per test. Missing PostgreSQL fails the tests, with a message that
//! says how to install it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

use upload_server::store::pg::PgCatalog;

/// A PostgreSQL server in a temp dir, stopped and removed on drop.
pub(crate) struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

/// Where Debian puts the server programs (not on PATH), or PATH.
fn pg_bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    // The newest version: directories are named by major version.
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = found.pop() {
        return dir;
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return dir;
        }
    }
    panic!(
        "PostgreSQL not found: no initdb/pg_ctl in /usr/lib/postgresql/*/bin or on PATH. \
         Install Debian's `postgresql` (apt-get install postgresql; .ci/run does) to run \
         the catalog tests."
    );
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `program args` run as the `postgres` user when we are root (initdb refuses root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PgServer {
    fn start() -> Self {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .unwrap();
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.arg("postgres:").arg(dir.path());
                    c
                },
                "chown the temp dir to postgres",
            );
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "--auth=trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        run(initdb, "initdb");
        // A free port can be taken between our probe and the server's bind: try again.
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let mut ctl = pg_command(&bin.join("pg_ctl"));
            ctl.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.path().join("log"))
                .args(["-w", "-t", "60", "-o"])
                .arg(format!(
                    "-p {port} -k {} -h 127.0.0.1 -c fsync=off -c synchronous_commit=off \
                     -c full_page_writes=off -c max_connections=300",
                    dir.path().display()
                ))
                .arg("start");
            let out = ctl.output().unwrap();
            if out.status.success() {
                return Self { dir, bin, port };
            }
            last = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        }
        panic!("pg_ctl start failed: {last}");
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut ctl = pg_command(&self.bin.join("pg_ctl"));
        ctl.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.output();
    }
}

/// One server for the tests that run together; the last one to finish stops it.
static SERVER: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());

fn server() -> Arc<PgServer> {
    let mut slot = SERVER.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(PgServer::start());
    *slot = Arc::downgrade(&s);
    s
}

/// A database of its own for one test, dropped with it.
pub(crate) struct TestDb {
    server: Arc<PgServer>,
    name: String,
}

impl TestDb {
    pub(crate) async fn new() -> Self {
        let server = tokio::task::spawn_blocking(server).await.unwrap();
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&server.url("postgres"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
        Self { server, name }
    }

    pub(crate) fn url(&self) -> String {
        self.server.url(&self.name)
    }

    pub(crate) async fn catalog(&self, pool: u32) -> PgCatalog {
        PgCatalog::connect(&self.url(), pool).await.unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let mut c = Command::new(self.server.bin.join("dropdb"));
        c.args(["-h", "127.0.0.1", "-U", "postgres", "--force", "-p"])
            .arg(self.server.port.to_string())
            .arg(&self.name);
        let _ = c.output();
    }
}
