//! What `up` starts: each process's name, command line, port and log file,
//! from the shipped config files (read only for their addresses).

use shared::config::{DiscoveryConfig, GatewayConfig};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

/// An app's admin port (`/chaos`, `/metrics`) is its port plus this.
pub const APP_ADMIN_OFFSET: u16 = 100;

/// One process to start.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub argv: Vec<String>,
    /// Every address it binds.
    pub binds: Vec<SocketAddr>,
    pub log: PathBuf,
    /// Extra environment (the registration token: never on a command line, which `ps` shows to everyone).
    pub env: Vec<(String, String)>,
}

/// The whole system.
#[derive(Clone, Debug)]
pub struct Plan {
    pub services: Vec<Service>,
    pub discovery_url: String,
    pub gateway_url: String,
    pub admin_url: String,
    pub apps: Vec<SocketAddr>,
    /// Each app's admin base URL by its business `host:port`.
    pub app_admins: BTreeMap<String, String>,
    pub state: PathBuf,
    pub dir: PathBuf,
    pub registration_token: String,
}

/// What to start, from `up`'s flags.
#[derive(Clone, Debug)]
pub struct Options<'a> {
    pub config_dir: &'a Path,
    pub bin_dir: &'a Path,
    pub state: &'a Path,
    /// One app per port (each replaced by a free one with `free`).
    pub app_ports: Vec<u16>,
    /// Pick free ports for whatever no flag below names.
    pub free: bool,
    pub discovery_port: Option<u16>,
    pub gateway_port: Option<u16>,
    pub admin_port: Option<u16>,
    /// Apps run with `--chaos` (the fault knobs `loadtest --chaos` turns).
    pub chaos: bool,
    pub registration_token: String,
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
        // A flag's port first, else a free one with --free-ports, else the file's.
        let pick = |configured: SocketAddr, flag: Option<u16>| -> Result<SocketAddr, String> {
            Ok(match flag {
                Some(port) => SocketAddr::new(configured.ip(), port),
                None if free => SocketAddr::new(configured.ip(), free_port()?),
                None => configured,
            })
        };
        let discovery_addr = pick(
            addr(&discovery.listen, "discovery listen")?,
            o.discovery_port,
        )?;
        let gateway_addr = pick(addr(&gateway.listen, "gateway listen")?, o.gateway_port)?;
        let admin_addr = pick(
            addr(&gateway.admin_listen, "gateway admin_listen")?,
            o.admin_port,
        )?;
        let token = o.registration_token.clone();
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
            env: vec![("DISCOVERY_REGISTRATION_TOKEN".into(), token.clone())],
        }];
        let mut apps = Vec::new();
        let mut app_admins = BTreeMap::new();
        for port in &o.app_ports {
            let port = if free { free_port()? } else { *port };
            // The fault knobs' own listener, never registered: app port + 100.
            let admin_port = if free {
                free_port()?
            } else {
                port.checked_add(APP_ADMIN_OFFSET).ok_or_else(|| {
                    format!("app port {port}: its admin port (+{APP_ADMIN_OFFSET}) is past 65535")
                })?
            };
            let at = SocketAddr::from(([127, 0, 0, 1], port));
            let admin_at = SocketAddr::from(([127, 0, 0, 1], admin_port));
            apps.push(at);
            app_admins.insert(at.to_string(), format!("http://{admin_at}"));
            let name = format!("app-{port}");
            let mut argv = vec![
                bin("app"),
                "--config".into(),
                path_arg(&app_file),
                "--port".into(),
                port.to_string(),
                "--admin-port".into(),
                admin_port.to_string(),
                "--discovery-url".into(),
                discovery_url.clone(),
            ];
            if o.chaos {
                argv.push("--chaos".into());
            }
            services.push(Service {
                argv,
                binds: vec![at, admin_at],
                log: log(&name),
                name,
                env: vec![("REGISTRATION_TOKEN".into(), token.clone())],
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
            env: Vec::new(),
        });
        Ok(Plan {
            services,
            discovery_url,
            gateway_url: format!("http://{gateway_addr}"),
            admin_url: format!("http://{admin_addr}"),
            apps,
            app_admins,
            state: state.to_path_buf(),
            dir,
            registration_token: token,
        })
    }

    /// Refuses to start when `up` already runs or a port is taken, naming which.
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
}
