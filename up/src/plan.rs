//! What `up` starts: each process's name, command line, ports and log file,
//! from the shipped config files (read only for their addresses).
//!
//! A port is either fixed (the config file's, or a flag's) or 0: the child
//! binds port 0 itself and `up` learns the port it got from its
//! "... listening on http://ADDR" log line (`--free-ports`). `up` never picks
//! a number for a child, so no other process can take it in between.

use crate::tls;
use serde_json::Value;
use shared::config::{DiscoveryConfig, GatewayConfig};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// An app's admin port (`/chaos`, `/metrics`) is its port plus this.
pub const APP_ADMIN_OFFSET: u16 = 100;

/// What kind of process a service runs: how its command line is written.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Discovery,
    /// With `--chaos` or not.
    App(bool),
    Gateway,
}

/// One address a service listens on.
#[derive(Clone, Debug)]
pub struct Bind {
    /// What its log line says: `<what> listening on http://ADDR`.
    pub what: &'static str,
    /// Port 0 until the child reported the port it got.
    pub addr: SocketAddr,
    /// The flag that sets this port, for the error when it is taken.
    pub flag: &'static str,
}

/// One process to start.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub kind: Kind,
    pub program: String,
    pub config: String,
    /// Every address it binds.
    pub binds: Vec<Bind>,
    pub log: PathBuf,
    /// Extra environment (the registration token: never on a command line, which `ps` shows to everyone).
    pub env: Vec<(String, String)>,
}

impl Service {
    /// Its command line, with the ports as they stand (0 until learned) and discovery's URL.
    pub fn argv(&self, discovery_url: &str) -> Vec<String> {
        let mut argv = vec![self.program.clone(), "--config".into(), self.config.clone()];
        let at = |i: usize| self.binds.get(i).map(|b| b.addr);
        let port = |i: usize| at(i).map_or(0, |a| a.port()).to_string();
        let addr = |i: usize| at(i).map(|a| a.to_string()).unwrap_or_default();
        match self.kind {
            Kind::Discovery => argv.extend(["--listen".into(), addr(0)]),
            Kind::App(chaos) => {
                argv.extend([
                    "--port".into(),
                    port(0),
                    "--admin-port".into(),
                    port(1),
                    "--discovery-url".into(),
                    discovery_url.to_string(),
                ]);
                if chaos {
                    argv.push("--chaos".into());
                }
            }
            Kind::Gateway => argv.extend([
                "--listen".into(),
                addr(0),
                "--admin-listen".into(),
                addr(1),
                "--discovery-url".into(),
                discovery_url.to_string(),
            ]),
        }
        argv
    }

    /// Whether a port is still to be learned from the child's log.
    pub fn unresolved(&self) -> bool {
        self.binds.iter().any(|b| b.addr.port() == 0)
    }
}

/// `up --tls`: the certificates, and the configs written with their keys.
#[derive(Clone, Debug)]
pub struct TlsPlan {
    pub files: tls::Files,
    /// Where the configs with the TLS keys go.
    pub config_dir: PathBuf,
    /// The shipped configs they are written from.
    discovery: Value,
    app: Value,
    gateway: Value,
    /// The routes' namespaces (discovery checks their instances over TLS).
    namespaces: Vec<String>,
}

/// The whole system.
#[derive(Clone, Debug)]
pub struct Plan {
    pub services: Vec<Service>,
    /// Empty while the port is still to be learned.
    pub discovery_url: String,
    /// The URL clients use: with `--tls`, the gateway's HTTPS port.
    pub gateway_url: String,
    /// The gateway's plain HTTP port (the same as `gateway_url` without `--tls`).
    pub plain_url: String,
    pub admin_url: String,
    /// The apps whose business port is known.
    pub apps: Vec<SocketAddr>,
    /// Each app's admin base URL by its business `host:port`.
    pub app_admins: BTreeMap<String, String>,
    pub state: PathBuf,
    pub dir: PathBuf,
    pub registration_token: String,
    pub tls: Option<TlsPlan>,
}

/// What to start, from `up`'s flags.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    pub config_dir: &'a Path,
    pub bin_dir: &'a Path,
    pub state: &'a Path,
    /// One app per port (each replaced by port 0 with `free`).
    pub app_ports: Vec<u16>,
    /// Port 0 (the child's pick) for whatever no flag below names.
    pub free: bool,
    pub discovery_port: Option<u16>,
    pub gateway_port: Option<u16>,
    pub admin_port: Option<u16>,
    /// Apps run with `--chaos` (the fault knobs `loadtest --chaos` turns).
    pub chaos: bool,
    pub registration_token: String,
    /// `--tls`: the gateway's HTTPS port, and discovery and the apps over TLS.
    pub tls: bool,
    /// The gateway's HTTPS port (default 8443, or any free one with `free`).
    pub tls_port: Option<u16>,
}

/// The gateway's HTTPS port with `--tls` when no flag names one.
pub const TLS_PORT: u16 = 8443;

/// The folder of the running executable, where cargo puts its sibling binaries.
pub fn own_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

fn addr(text: &str, what: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{what} {text:?} is not an IP:port address: {e}"))
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// `http://ADDR` (`https://` with `tls`), or empty while the port is still to be learned.
fn url(at: SocketAddr, tls: bool) -> String {
    match (at.port(), tls) {
        (0, _) => String::new(),
        (_, false) => format!("http://{at}"),
        (_, true) => format!("https://{at}"),
    }
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl Plan {
    pub fn new(o: &Options) -> Result<Plan, String> {
        let Options {
            config_dir,
            bin_dir,
            state,
            free,
            ..
        } = *o;
        let discovery_file = config_dir.join("discovery.json");
        let gateway_file = config_dir.join("gateway.json");
        let app_file = config_dir.join("app.json");
        for f in [&discovery_file, &gateway_file, &app_file] {
            if !f.is_file() {
                return Err(format!(
                    "missing config file {} (run from the repository root, or pass --config-dir)",
                    f.display()
                ));
            }
        }
        let discovery: DiscoveryConfig =
            shared::config::load(Some(&discovery_file)).map_err(|e| e.to_string())?;
        let gateway: GatewayConfig =
            shared::config::load(Some(&gateway_file)).map_err(|e| e.to_string())?;
        // A flag's port first, else port 0 (the child's pick) with --free-ports, else the file's.
        let pick = |configured: SocketAddr, flag: Option<u16>| -> SocketAddr {
            match flag {
                Some(port) => SocketAddr::new(configured.ip(), port),
                None if free => SocketAddr::new(configured.ip(), 0),
                None => configured,
            }
        };
        let discovery_addr = pick(
            addr(&discovery.listen, "discovery listen")?,
            o.discovery_port,
        );
        let gateway_addr = pick(addr(&gateway.listen, "gateway listen")?, o.gateway_port);
        let admin_addr = pick(
            addr(&gateway.admin_listen, "gateway admin_listen")?,
            o.admin_port,
        );
        let token = o.registration_token.clone();
        let dir = state.parent().map(Path::to_path_buf).unwrap_or_default();
        let tls = if o.tls {
            let files = tls::Files::under(&dir);
            let config_dir = files
                .dir
                .parent()
                .map_or_else(|| dir.join("config"), |d| d.join("config"));
            let mut namespaces: Vec<String> =
                gateway.routes.iter().map(|r| r.namespace.clone()).collect();
            namespaces.sort();
            namespaces.dedup();
            Some(TlsPlan {
                files,
                config_dir,
                discovery: read_json(&discovery_file)?,
                app: read_json(&app_file)?,
                gateway: read_json(&gateway_file)?,
                namespaces,
            })
        } else {
            None
        };
        // With --tls, a service whose config takes TLS keys runs from the copy with them.
        let config_of = |name: &str, shipped: &Path| match &tls {
            Some(t) => path_arg(&t.config_dir.join(format!("{name}.json"))),
            None => path_arg(shipped),
        };
        let tls_addr = pick(SocketAddr::new(gateway_addr.ip(), TLS_PORT), o.tls_port);
        let bin = |name: &str| path_arg(&bin_dir.join(name));
        let log = |name: &str| dir.join(format!("{name}.log"));
        // A port learned from the log needs the info-level "listening on" line.
        let mut learn_env = Vec::new();
        if free && quieter_than_info(std::env::var("LOG_LEVEL").ok().as_deref()) {
            learn_env.push(("LOG_LEVEL".to_string(), "info".to_string()));
        }
        let mut services = vec![Service {
            name: "discovery".into(),
            kind: Kind::Discovery,
            program: bin("discovery"),
            config: config_of("discovery", &discovery_file),
            binds: vec![Bind {
                what: "discovery",
                addr: discovery_addr,
                flag: "--discovery-port",
            }],
            log: log("discovery"),
            env: [("DISCOVERY_REGISTRATION_TOKEN".into(), token.clone())]
                .into_iter()
                .chain(learn_env.iter().cloned())
                .collect(),
        }];
        for (i, port) in o.app_ports.iter().enumerate() {
            let (port, admin_port) = if free {
                (0, 0)
            } else {
                // The fault knobs' own listener, never registered: app port + 100.
                let admin = port.checked_add(APP_ADMIN_OFFSET).ok_or_else(|| {
                    format!("app port {port}: its admin port (+{APP_ADMIN_OFFSET}) is past 65535")
                })?;
                (*port, admin)
            };
            // Named by its port; one to be learned is numbered until then.
            let name = if port == 0 {
                format!("app-{}", i + 1)
            } else {
                format!("app-{port}")
            };
            services.push(Service {
                kind: Kind::App(o.chaos),
                program: bin("app"),
                config: config_of("app", &app_file),
                binds: vec![
                    Bind {
                        what: "app",
                        addr: SocketAddr::from(([127, 0, 0, 1], port)),
                        flag: "--app-ports",
                    },
                    Bind {
                        what: "app admin",
                        addr: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                        flag: "--app-ports",
                    },
                ],
                log: log(&name),
                name,
                env: [("REGISTRATION_TOKEN".into(), token.clone())]
                    .into_iter()
                    .chain(learn_env.iter().cloned())
                    .collect(),
            });
        }
        let mut gateway_binds = vec![
            Bind {
                what: "gateway",
                addr: gateway_addr,
                flag: "--gateway-port",
            },
            Bind {
                what: "gateway admin",
                addr: admin_addr,
                flag: "--admin-port",
            },
        ];
        if tls.is_some() {
            // Logged as "gateway TLS port on https://ADDR".
            gateway_binds.push(Bind {
                what: "gateway TLS port",
                addr: tls_addr,
                flag: "--tls-port",
            });
        }
        services.push(Service {
            name: "gateway".into(),
            kind: Kind::Gateway,
            program: bin("gateway"),
            config: config_of("gateway", &gateway_file),
            binds: gateway_binds,
            log: log("gateway"),
            env: learn_env,
        });
        let mut plan = Plan {
            services,
            discovery_url: String::new(),
            gateway_url: String::new(),
            plain_url: String::new(),
            admin_url: String::new(),
            apps: Vec::new(),
            app_admins: BTreeMap::new(),
            state: state.to_path_buf(),
            dir,
            registration_token: token,
            tls,
        };
        plan.refresh();
        Ok(plan)
    }

    /// Whether discovery and the apps serve HTTPS (`--tls`).
    pub fn services_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The URLs and app lists from the services' addresses as they stand.
    fn refresh(&mut self) {
        self.apps.clear();
        self.app_admins.clear();
        let services_tls = self.services_tls();
        for s in &self.services {
            let at = |i: usize| s.binds.get(i).map(|b| b.addr);
            match (s.kind, at(0), at(1)) {
                (Kind::Discovery, Some(a), _) => self.discovery_url = url(a, services_tls),
                (Kind::Gateway, Some(a), Some(admin)) => {
                    self.plain_url = url(a, false);
                    self.gateway_url = match at(2) {
                        Some(tls) => url(tls, true),
                        None => self.plain_url.clone(),
                    };
                    self.admin_url = url(admin, false);
                }
                (Kind::App(_), Some(a), Some(admin)) if a.port() != 0 => {
                    self.apps.push(a);
                    if admin.port() != 0 {
                        self.app_admins.insert(a.to_string(), url(admin, false));
                    }
                }
                _ => {}
            }
        }
    }

    /// Records the addresses service `i` reported (one per bind, in order).
    /// An app named by number until now takes its port's name and log file:
    /// returns the old log path when it moved.
    pub fn learned(&mut self, i: usize, addrs: &[SocketAddr]) -> Option<PathBuf> {
        let s = self.services.get_mut(i)?;
        let numbered = matches!(s.kind, Kind::App(_)) && s.binds[0].addr.port() == 0;
        for (bind, at) in s.binds.iter_mut().zip(addrs) {
            bind.addr = *at;
        }
        let mut moved = None;
        if numbered {
            s.name = format!("app-{}", s.binds[0].addr.port());
            let log = self.dir.join(format!("{}.log", s.name));
            moved = Some(std::mem::replace(&mut s.log, log));
        }
        self.refresh();
        moved
    }

    /// With `--tls`: writes the configs with the TLS keys from the shipped
    /// ones, the gateway's TLS port as it stands (written again once a port 0
    /// is learned, so a restart binds the same port).
    pub fn write_configs(&self) -> Result<(), String> {
        let Some(t) = &self.tls else {
            return Ok(());
        };
        std::fs::create_dir_all(&t.config_dir)
            .map_err(|e| format!("cannot create {}: {e}", t.config_dir.display()))?;
        let keys = tls::Keys { files: &t.files };
        let tls_listen = self
            .services
            .iter()
            .find(|s| s.kind == Kind::Gateway)
            .and_then(|s| s.binds.get(2))
            .map(|b| b.addr.to_string())
            .unwrap_or_default();
        let mut gateway = t.gateway.clone();
        keys.gateway(&mut gateway, &tls_listen);
        let (mut discovery, mut app) = (t.discovery.clone(), t.app.clone());
        keys.discovery(&mut discovery, &t.namespaces);
        keys.app(&mut app);
        for (name, config) in [("gateway", gateway), ("discovery", discovery), ("app", app)] {
            let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())?;
            tls::write(&t.config_dir.join(format!("{name}.json")), &text, 0o644)?;
        }
        Ok(())
    }

    /// Refuses to start when `up` already runs or a fixed port is taken, naming which.
    pub fn check(&self) -> Result<(), String> {
        if let Ok(state) = shared::runstate::RunState::load(&self.state) {
            let alive: Vec<String> = state
                .processes
                .iter()
                .filter(|(_, p)| crate::pids::alive(p.pid))
                .map(|(name, p)| format!("{name} (pid {})", p.pid))
                .collect();
            if !alive.is_empty() {
                return Err(format!(
                    "the system is already up: {} (see {}); stop it with `just down` (or Ctrl-C where it runs)",
                    alive.join(", "),
                    self.state.display()
                ));
            }
        }
        for s in &self.services {
            for b in s.binds.iter().filter(|b| b.addr.port() != 0) {
                if let Err(e) = TcpListener::bind(b.addr) {
                    return Err(port_taken(b.addr.port(), &s.name, b.flag, &e.to_string()));
                }
            }
        }
        for s in &self.services {
            if !Path::new(&s.program).is_file() {
                return Err(format!(
                    "{} is missing: build first (cargo build --release --workspace --bins)",
                    s.program
                ));
            }
        }
        Ok(())
    }
}

/// The error for a port another process holds, with the ways out.
pub fn port_taken(port: u16, name: &str, flag: &str, why: &str) -> String {
    format!(
        "port {port} for {name} is taken ({why}). Stop whatever uses it (`ss -ltnp 'sport = :{port}'` names it; \
         `just down` if it is an earlier `just up`), move it with {flag} (the port flags: --discovery-port, \
         --app-ports or --apps, --gateway-port, --admin-port; `just up --help`), or run `just up --free-ports` \
         to let every process take any free port"
    )
}

/// Whether a `LOG_LEVEL` hides info lines (the services parse it as `log::LevelFilter`).
fn quieter_than_info(level: Option<&str>) -> bool {
    level.is_some_and(|l| {
        matches!(
            l.trim().to_ascii_lowercase().as_str(),
            "off" | "error" | "warn"
        )
    })
}

/// A fresh registration token: 128 random bits from the kernel, as 32 hex digits.
pub fn new_token() -> Result<String, String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom for a registration token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_32_hex_digits_and_differ() {
        let (a, b) = (super::new_token().unwrap(), super::new_token().unwrap());
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_ne!(a, b);
    }

    fn options<'a>(
        dir: &'a std::path::Path,
        state: &'a std::path::Path,
        free: bool,
    ) -> super::Options<'a> {
        super::Options {
            config_dir: dir,
            bin_dir: dir,
            state,
            app_ports: vec![8080, 8081],
            free,
            discovery_port: None,
            gateway_port: Some(9000),
            admin_port: None,
            chaos: true,
            registration_token: "t".into(),
            tls: false,
            tls_port: None,
        }
    }

    #[test]
    fn free_ports_are_port_zero_and_learned_from_the_children() {
        let config = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut plan =
            super::Plan::new(&options(&config, &config.join("state.json"), true)).unwrap();
        let ports: Vec<u16> = plan
            .services
            .iter()
            .flat_map(|s| s.binds.iter().map(|b| b.addr.port()))
            .collect();
        // up picks no number: 0 everywhere but the port a flag names.
        assert_eq!(ports, [0, 0, 0, 0, 0, 9000, 0]);
        assert_eq!(plan.discovery_url, "");
        assert_eq!(plan.services[1].name, "app-1");
        plan.learned(0, &["127.0.0.1:41000".parse().unwrap()]);
        assert_eq!(plan.discovery_url, "http://127.0.0.1:41000");
        let argv = plan.services[1].argv(&plan.discovery_url);
        assert!(argv.ends_with(&[
            "--port".into(),
            "0".into(),
            "--admin-port".into(),
            "0".into(),
            "--discovery-url".into(),
            "http://127.0.0.1:41000".into(),
            "--chaos".into()
        ]));
        let moved = plan.learned(
            1,
            &[
                "127.0.0.1:41001".parse().unwrap(),
                "127.0.0.1:41002".parse().unwrap(),
            ],
        );
        assert_eq!(moved, Some(config.join("app-1.log")));
        assert_eq!(plan.services[1].name, "app-41001");
        assert_eq!(plan.services[1].log, config.join("app-41001.log"));
        assert_eq!(plan.apps, ["127.0.0.1:41001".parse().unwrap()]);
        assert_eq!(
            plan.app_admins.get("127.0.0.1:41001").map(String::as_str),
            Some("http://127.0.0.1:41002")
        );
        // Restarts reuse the learned ports.
        assert!(plan.services[1]
            .argv(&plan.discovery_url)
            .contains(&"41002".to_string()));
    }

    #[test]
    fn fixed_ports_come_from_the_files_and_flags() {
        let config = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let plan = super::Plan::new(&options(&config, &config.join("state.json"), false)).unwrap();
        let ports: Vec<u16> = plan
            .services
            .iter()
            .flat_map(|s| s.binds.iter().map(|b| b.addr.port()))
            .collect();
        assert_eq!(ports, [8500, 8080, 8180, 8081, 8181, 9000, 8001]);
        assert_eq!(plan.discovery_url, "http://127.0.0.1:8500");
        assert_eq!(plan.services[2].name, "app-8081");
        assert!(!plan.services.iter().any(super::Service::unresolved));
    }

    #[test]
    fn with_tls_the_gateway_runs_from_a_config_with_its_https_port() {
        let config = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let tmp = testkit::tempdir::TempDir::new("up-plan-tls");
        let state = tmp.join("state.json");
        let mut o = options(&config, &state, false);
        o.tls = true;
        let plan = super::Plan::new(&o).unwrap();
        let gateway = plan.services.last().unwrap();
        assert_eq!(gateway.binds[2].addr, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(plan.gateway_url, "https://127.0.0.1:8443");
        assert_eq!(plan.plain_url, "http://127.0.0.1:9000");
        let written = tmp.join("config/gateway.json");
        assert_eq!(gateway.config, written.display().to_string());
        plan.write_configs().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
        assert_eq!(json["tls"]["listen"], "127.0.0.1:8443");
        assert_eq!(json["routes"][0]["namespace"], "service A");
        // Discovery and the apps run from the copies with their keys too.
        let shipped = config.join("discovery.json").display().to_string();
        assert_ne!(plan.services[0].config, shipped);
        assert!(plan.services_tls());
        // A free TLS port is learned and written back for restarts.
        o.free = true;
        let mut plan = super::Plan::new(&o).unwrap();
        let last = plan.services.len() - 1;
        plan.learned(
            last,
            &[
                "127.0.0.1:9000".parse().unwrap(),
                "127.0.0.1:41001".parse().unwrap(),
                "127.0.0.1:41002".parse().unwrap(),
            ],
        );
        plan.write_configs().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&written).unwrap()).unwrap();
        assert_eq!(json["tls"]["listen"], "127.0.0.1:41002");
        assert_eq!(plan.gateway_url, "https://127.0.0.1:41002");
    }

    #[test]
    fn a_taken_port_names_the_ways_out() {
        let text = super::port_taken(8080, "app-8080", "--app-ports", "Address already in use");
        for part in ["--free-ports", "--app-ports", "--gateway-port", "just down"] {
            assert!(text.contains(part), "{text}");
        }
    }
}
