//! What `up` starts: each process's name, command line, port and log file,
//! from the shipped config files (read only for their addresses).

use shared::config::{DiscoveryConfig, GatewayConfig};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// One process to start.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    /// Every address it binds.
    pub binds: Vec<SocketAddr>,
    pub log: PathBuf,
}

/// The whole system.
#[derive(Clone, Debug)]
pub struct Plan {
    pub services: Vec<Service>,
    pub discovery_url: String,
    pub gateway_url: String,
    pub admin_url: String,
    pub apps: Vec<SocketAddr>,
    pub state: PathBuf,
    pub dir: PathBuf,
}

/// The folder of the running executable, where cargo puts its sibling binaries.
pub fn own_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()?
        .parent()
        .map(Path::to_path_buf)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

fn addr(text: &str, what: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|e| format!("{what} {text:?} is not an IP:port address: {e}"))
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

impl Plan {
    pub fn new(
        config_dir: &Path,
        bin_dir: &Path,
        state: &Path,
        app_ports: &[u16],
        free: bool,
    ) -> Result<Plan, String> {
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
        let pick = |configured: SocketAddr| -> Result<SocketAddr, String> {
            Ok(if free {
                SocketAddr::new(configured.ip(), free_port()?)
            } else {
                configured
            })
        };
        let discovery_addr = pick(addr(&discovery.listen, "discovery listen")?)?;
        let gateway_addr = pick(addr(&gateway.listen, "gateway listen")?)?;
        let admin_addr = pick(addr(&gateway.admin_listen, "gateway admin_listen")?)?;
        let discovery_url = format!("http://{discovery_addr}");
        let dir = state.parent().map(Path::to_path_buf).unwrap_or_default();
        let bin = |name: &str| path_arg(&bin_dir.join(name));
        let log = |name: &str| dir.join(format!("{name}.log"));

        let mut services = vec![Service {
            name: "discovery".into(),
            argv: vec![
                bin("discovery"),
                "--config".into(),
                path_arg(&discovery_file),
                "--listen".into(),
                discovery_addr.to_string(),
            ],
            binds: vec![discovery_addr],
            log: log("discovery"),
        }];
        let mut apps = Vec::new();
        for port in app_ports {
            let port = if free { free_port()? } else { *port };
            let at = SocketAddr::from(([127, 0, 0, 1], port));
            apps.push(at);
            let name = format!("app-{port}");
            services.push(Service {
                argv: vec![
                    bin("app"),
                    "--config".into(),
                    path_arg(&app_file),
                    "--port".into(),
                    port.to_string(),
                    "--discovery-url".into(),
                    discovery_url.clone(),
                    "--chaos".into(),
                ],
                binds: vec![at],
                log: log(&name),
                name,
            });
        }
        services.push(Service {
            name: "gateway".into(),
            argv: vec![
                bin("gateway"),
                "--config".into(),
                path_arg(&gateway_file),
                "--listen".into(),
                gateway_addr.to_string(),
                "--admin-listen".into(),
                admin_addr.to_string(),
                "--discovery-url".into(),
                discovery_url.clone(),
            ],
            binds: vec![gateway_addr, admin_addr],
            log: log("gateway"),
        });
        Ok(Plan {
            services,
            discovery_url,
            gateway_url: format!("http://{gateway_addr}"),
            admin_url: format!("http://{admin_addr}"),
            apps,
            state: state.to_path_buf(),
            dir,
        })
    }

    /// Refuses to start when `up` already runs or a port is taken, naming which.
    pub fn check(&self) -> Result<(), String> {
        if let Ok(state) = shared::runstate::RunState::load(&self.state) {
            let alive: Vec<String> = state
                .processes
                .iter()
                .filter(|(_, p)| crate::supervise::alive(p.pid))
                .map(|(name, p)| format!("{name} (pid {})", p.pid))
                .collect();
            if !alive.is_empty() {
                return Err(format!(
                    "the system is already up: {} (see {}); stop it with Ctrl-C where it runs",
                    alive.join(", "),
                    self.state.display()
                ));
            }
        }
        for s in &self.services {
            for at in &s.binds {
                if let Err(e) = TcpListener::bind(at) {
                    return Err(format!(
                        "port {} for {} is taken ({e}): stop whatever uses it, or change config/",
                        at.port(),
                        s.name
                    ));
                }
            }
        }
        for s in &self.services {
            if !Path::new(&s.argv[0]).is_file() {
                return Err(format!(
                    "{} is missing: build first (cargo build --release)",
                    s.argv[0]
                ));
            }
        }
        Ok(())
    }
}
