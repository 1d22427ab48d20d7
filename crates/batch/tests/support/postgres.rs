//! A throwaway PostgreSQL cluster on loopback for tests: `initdb` and `pg_ctl` from the
//! machine's PostgreSQL, run as the unprivileged `postgres` user when the tests run as root
//! (PostgreSQL refuses root). Stopped and deleted when dropped. Never skipped: a machine without
//! PostgreSQL fails the test and says what to install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A running cluster; [`url`](Self::url) reaches its `postgres` database.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_user: Option<String>,
}

/// How a test cluster differs from the default one.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    /// Addresses it listens on beside 127.0.0.1 (a veth address the test made).
    pub listen: Vec<String>,
    /// Lines added to `pg_hba.conf` (such as `host all all 10.0.0.0/30 trust`).
    pub hba: Vec<String>,
    /// Server settings, as `name=value`.
    pub settings: Vec<String>,
    /// TLS with this certificate (`hostssl` lines in `hba` then reach it).
    pub tls: Option<Tls>,
}

/// A test CA, and a server certificate it signed for one address, made with openssl in a
/// folder the cluster's user owns (PostgreSQL and pgbouncer refuse a key others may read):
/// what a state on a non-local address needs, since the state verifies its server.
#[derive(Debug, Clone)]
pub struct Tls {
    dir: PathBuf,
    /// The CA's certificate, for `sslrootcert=`.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    /// A CA, and a certificate for `ip` signed by it, in a new folder under `parent`.
    pub fn for_address(parent: &Path, ip: &str) -> Self {
        let dir = parent.join(format!("tls-{ip}"));
        std::fs::create_dir_all(&dir).expect("the certificates' folder");
        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        let mut ca = vec!["req", "-x509"];
        ca.extend(EC_KEY);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=gptimage test CA",
        ]);
        tls.openssl(&ca);
        tls.signed("server", &format!("IP:{ip}"));
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&tls.dir)
                .status()
                .expect("chown runs");
            assert!(status.success());
        }
        tls
    }

    /// Another certificate signed by the same CA, for `san` (`DNS:other.example`): its
    /// certificate and key.
    pub fn signed(&self, name: &str, san: &str) -> (PathBuf, PathBuf) {
        let ext = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext), format!("subjectAltName={san}\n")).expect("written");
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut request = vec!["req"];
        request.extend(EC_KEY);
        request.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=db"]);
        self.openssl(&request);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(self.dir.join(&key), std::fs::Permissions::from_mode(0o600))
                .expect("the key made private");
        }
        (self.dir.join(pem), self.dir.join(key))
    }

    /// The server settings that turn TLS on with this certificate.
    fn settings(&self) -> Vec<String> {
        vec![
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", path(&self.cert)),
            format!("ssl_key_file={}", path(&self.key)),
        ]
    }

    fn openssl(&self, args: &[&str]) {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("openssl is needed (.ci/run installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A P-256 key, made without a passphrase.
const EC_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

impl Postgres {
    /// Creates and starts a cluster on a free loopback port.
    pub fn start() -> Self {
        Self::start_with(&Setup::default())
    }

    /// Like [`start`](Self::start), set up as `setup` says.
    pub fn start_with(setup: &Setup) -> Self {
        let bin = find_bin();
        let as_user = running_as_root().then(|| "postgres".to_owned());
        let dir = tempfile::Builder::new()
            .prefix("gptimage-pg-")
            .tempdir()
            .expect("a temporary folder");
        if let Some(user) = &as_user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(
                status.success(),
                "could not give the cluster folder to {user}"
            );
        }
        let data = dir.path().join("data");
        let port = free_port();
        let mut cluster = Self {
            dir,
            bin,
            port,
            as_user,
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                path(&data),
                "--auth=trust",
                "-U",
                "gptimage",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        if !setup.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let mut text = std::fs::read_to_string(&hba).expect("initdb wrote pg_hba.conf");
            for line in &setup.hba {
                text.push_str(line);
                text.push('\n');
            }
            std::fs::write(&hba, text).expect("pg_hba.conf is written");
        }
        let listen = std::iter::once("127.0.0.1".to_owned())
            .chain(setup.listen.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        // A free port is free only until someone binds it: with tests side by side, another may
        // take it between `free_port` and the server's bind. Then the start is tried again on
        // another port (a few times at most).
        for attempt in 1..=5 {
            let mut options = format!(
                "-p {} -c listen_addresses={listen} -k {} -c fsync=off -c max_connections=200",
                cluster.port,
                cluster.dir.path().display()
            );
            let tls = setup.tls.iter().flat_map(Tls::settings);
            for setting in setup.settings.iter().cloned().chain(tls) {
                options.push_str(&format!(" -c {setting}"));
            }
            let log = cluster.dir.path().join("log");
            let _ = std::fs::remove_file(&log);
            let output = cluster
                .tool("pg_ctl")
                .args(["-D", path(&data), "-o", &options, "-l", path(&log)])
                .args(["-w", "-t", "60", "start"])
                .current_dir(cluster.dir.path())
                .output()
                .unwrap_or_else(|e| panic!("pg_ctl could not run: {e}"));
            if output.status.success() {
                break;
            }
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                attempt < 5 && said.contains("already in use"),
                "pg_ctl failed: {}\n{said}",
                text(&output)
            );
            cluster.port = free_port();
        }
        cluster
    }

    /// `postgres://gptimage@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://gptimage@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database (one per test keeps tests apart); its URL.
    pub fn create_database(&self, name: &str) -> String {
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the server has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The rows a query returns in `database`, as psql prints them unaligned (`|` between
    /// columns, a line a row).
    pub fn query(&self, database: &str, statement: &str) -> String {
        self.try_sql(database, statement)
            .unwrap_or_else(|error| panic!("psql {statement}: {error}"))
    }

    /// Like [`query`](Self::query), the server's error returned rather than a panic.
    pub fn try_sql(&self, database: &str, statement: &str) -> Result<String, String> {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "gptimage",
            ])
            .args([
                "-v",
                "ON_ERROR_STOP=1",
                "-tA",
                "-d",
                database,
                "-c",
                statement,
            ])
            .output()
            .expect("psql runs");
        if !output.status.success() {
            return Err(text(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs one SQL statement in `database` as the superuser.
    pub fn sql(&self, database: &str, statement: &str) {
        self.query(database, statement);
    }

    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let output = self
            .tool(tool)
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{tool} could not run: {e}"));
        assert!(
            output.status.success(),
            "{tool} failed: {}\n{}",
            text(&output),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
        output
    }

    /// One of PostgreSQL's server programs, run as the cluster's owner.
    fn tool(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        match &self.as_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        }
    }
}

impl Postgres {
    /// A streaming standby of this cluster, named `name` (its `application_name`, which
    /// `synchronous_standby_names` can list): a base backup, started on a port of its own and
    /// following this cluster. The default cluster already allows replication from loopback.
    pub fn standby(&self, name: &str) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("gptimage-pg-standby-")
            .tempdir()
            .expect("a temporary folder");
        if let Some(user) = &self.as_user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(status.success());
        }
        let data = dir.path().join("data");
        let port = free_port();
        let standby = Postgres {
            dir,
            bin: self.bin.clone(),
            port,
            as_user: self.as_user.clone(),
        };
        let conninfo = format!(
            "host=127.0.0.1 port={} user=gptimage application_name={name}",
            self.port
        );
        standby.run(
            "pg_basebackup",
            &[
                "-d",
                &conninfo,
                "-D",
                path(&data),
                "-R",
                "-X",
                "stream",
                // A checkpoint at once, not spread over minutes.
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        // -R wrote how to follow; name the standby, so a synchronous setting can list it.
        let auto = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).expect("pg_basebackup wrote it");
        text.push_str(&format!("primary_conninfo = '{conninfo}'\n"));
        std::fs::write(&auto, text).expect("written");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=200",
            standby.dir.path().display()
        );
        standby.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-o",
                &options,
                "-l",
                path(&standby.dir.path().join("log")),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        standby
    }

    /// Makes commits wait until the standbys named in `names` have them
    /// (`synchronous_standby_names`), and reloads.
    pub fn synchronous(&self, names: &str) {
        self.sql(
            "postgres",
            &format!("ALTER SYSTEM SET synchronous_standby_names = '{names}'"),
        );
        self.sql("postgres", "SELECT pg_reload_conf()");
    }

    /// Promotes a standby to a primary, and waits until it is one.
    pub fn promote(&self) {
        let data = self.dir.path().join("data");
        self.run("pg_ctl", &["-D", path(&data), "-w", "-t", "60", "promote"]);
    }

    /// Stops the server as a crash would: no checkpoint, no goodbye to its clients.
    pub fn stop_immediately(&self) {
        let data = self.dir.path().join("data");
        self.run(
            "pg_ctl",
            &["-D", path(&data), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// A pgbouncer in front of a [`Postgres`] cluster, stopped when dropped.
pub struct Pooler {
    child: std::process::Child,
    port: u16,
    /// Its configuration file, which names its process alone.
    config: PathBuf,
}

impl Pooler {
    /// `postgres://gptimage@127.0.0.1:PORT/DATABASE`, through the pooler.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://gptimage@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Pooler {
    fn drop(&mut self) {
        // The child may be `runuser`, which pgbouncer outlives: end pgbouncer itself.
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("pgbouncer {}", self.config.display()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Postgres {
    /// Starts pgbouncer (Debian's `pgbouncer`, run as the cluster's owner: it refuses root) in
    /// front of this cluster, pooling in `mode` (`session` or `transaction`).
    pub fn pooler(&self, mode: &str) -> Pooler {
        self.pooler_on(mode, &[], None)
    }

    /// Like [`pooler`](Self::pooler), listening on `also` (a veth address the test made)
    /// beside 127.0.0.1, with TLS for its clients if `tls` is given.
    pub fn pooler_on(&self, mode: &str, also: &[String], tls: Option<&Tls>) -> Pooler {
        let port = free_port();
        let listen = std::iter::once("127.0.0.1".to_owned())
            .chain(also.iter().cloned())
            .collect::<Vec<_>>()
            .join(",");
        let dir = self.dir.path().join(format!("pgbouncer-{mode}"));
        std::fs::create_dir_all(&dir).expect("the pooler's folder");
        std::fs::write(dir.join("userlist.txt"), "\"gptimage\" \"\"\n").expect("written");
        let ini = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\nlisten_addr = {listen}\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\n\
             pool_mode = {mode}\nmax_client_conn = 200\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits,search_path\nlogfile = {}\n",
            self.port,
            dir.join("userlist.txt").display(),
            dir.join("pgbouncer.log").display()
        );
        let ini = match tls {
            Some(tls) => format!(
                "{ini}client_tls_sslmode = allow\nclient_tls_cert_file = {}\n\
                 client_tls_key_file = {}\n",
                path(&tls.cert),
                path(&tls.key)
            ),
            None => ini,
        };
        let config = dir.join("pgbouncer.ini");
        std::fs::write(&config, ini).expect("written");
        if let Some(user) = &self.as_user {
            let status = Command::new("chown")
                .args(["-R", user])
                .arg(&dir)
                .status()
                .expect("chown runs");
            assert!(status.success());
        }
        let program = which("pgbouncer").expect(
            "pgbouncer is needed for the pooler test: install Debian's `pgbouncer` (.ci/run does)",
        );
        let mut command = match &self.as_user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        let child = command
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("pgbouncer starts");
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "pgbouncer did not listen: {}",
                std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Pooler {
            child,
            port,
            config,
        }
    }
}

/// A program on the PATH, or in the sbin folders Debian installs servers to.
fn which(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self
            .tool("pg_ctl")
            .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temporary paths are UTF-8")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The folder of `initdb` and `pg_ctl`: on the PATH, or Debian's newest
/// `/usr/lib/postgresql/N/bin`.
pub fn find_bin() -> PathBuf {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if dir.join("initdb").is_file() && dir.join("pg_ctl").is_file() {
                // Debian's /usr/bin wrappers are not the real tools; prefer the versioned folder.
                if let Ok(real) = std::fs::canonicalize(dir.join("initdb"))
                    && let Some(parent) = real.parent()
                {
                    return parent.to_path_buf();
                }
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().expect(
        "PostgreSQL's server tools (initdb, pg_ctl) are needed: install Debian's `postgresql` \
         package (.ci/run does)",
    )
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
