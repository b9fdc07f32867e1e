//! `mosaic`: the Mosaic iSCSI target.
//!
//! `mosaic` alone starts the lab cluster (as `mosaic lab` does): three nodes in this
//! process, each with two NIC portals (`127.0.i.1:3260`, `127.0.i.2:3260`), a group
//! portal on 127.0.0.1:3260 for discovery and redirected logins, and a 1 GiB demo
//! volume spread over all nodes (sparse files under `./data/node<i>`); it takes the
//! lab's flags (`mosaic lab --help`). `mosaic serve` is the single-node target.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mosaic_target::cluster::admin::{self, Admin, DEFAULT_ADMIN_ADDR};
use mosaic_target::cluster::admin_client::{AdminClient, ClientError, CreateArgs};
use mosaic_target::cluster::lab::{Lab, LabConfig};
use mosaic_target::config::{Config, Settings};
use mosaic_target::server::Server;
use tokio::sync::watch;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "mosaic",
    version,
    about = "Mosaic iSCSI target cluster",
    long_about = "Mosaic iSCSI target cluster. Without a command, starts the lab cluster \
                  (three nodes in this process, a demo volume spread over them) and takes \
                  the flags of `mosaic lab`.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The lab a bare `mosaic` starts.
    #[command(flatten)]
    lab: LabArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve volumes over iSCSI from this one node (a stand-alone target).
    Serve(ServeArgs),
    /// Run a lab cluster (the default): several nodes in this process, each volume
    /// spread over all of them by pages, a group portal for discovery and
    /// redirected logins.
    Lab(LabArgs),
    /// Create, list, resize and delete the volumes of a running lab (through its
    /// admin endpoint).
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Show how a volume of a running lab is spread over the nodes.
    #[command(subcommand)]
    Routing(RoutingCommand),
    /// Show a running lab: nodes, portals and their connections, sessions, I/O.
    Status(AdminArgs),
    /// Show or switch a running lab's I/O mode (forward or short-cut).
    IoMode {
        /// `forward` or `short-cut`; without it, the current mode is shown.
        mode: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where a running lab's admin endpoint is.
#[derive(Debug, Args)]
struct AdminArgs {
    /// The lab's admin endpoint (`mosaic lab --admin`).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_ADMIN_ADDR)]
    admin: String,
}

#[derive(Debug, Subcommand)]
enum VolumeCommand {
    /// Create a volume, spread over every node by pages.
    Create {
        /// Name (lower-case letters, digits, '-' and '.'); the IQN ends with it.
        name: String,
        /// Size in bytes or with K/M/G/T.
        #[arg(long)]
        size: String,
        /// Logical block size: 512 or 4096.
        #[arg(long)]
        block_size: Option<u32>,
        /// Page size (a power of two, bytes or K/M/G); the lab's by default.
        #[arg(long)]
        page_size: Option<String>,
        /// Replicas per page besides the primary; the lab's by default.
        #[arg(long)]
        replicas: Option<u8>,
        /// Where each node keeps its pages: file (the default) or memory.
        #[arg(long)]
        backing: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the volumes.
    List(AdminArgs),
    /// Grow or shrink a volume.
    Resize {
        name: String,
        /// The new size in bytes or with K/M/G/T.
        #[arg(long)]
        size: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Delete a volume and its data.
    Delete {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RoutingCommand {
    /// Pages per node and a compact map of a volume's pages.
    Show {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Move the primary of pages of a volume to another node (their data is
    /// copied there first when it holds no copy); initiators are told by a unit
    /// attention to fetch the table again.
    Move {
        name: String,
        /// A page number or an inclusive range FIRST-LAST.
        #[arg(long)]
        pages: String,
        /// The node to become the pages' primary.
        #[arg(long)]
        to: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// One request to the admin endpoint, answering text for people.
type AdminCall<'a> = Box<dyn Fn(&AdminClient) -> Result<String, ClientError> + 'a>;

/// Runs a client command against a lab's admin endpoint; `None` for the others.
fn run_client(command: &Option<Command>) -> Option<Result<()>> {
    let (addr, call): (&str, AdminCall) = match command {
        Some(Command::Volume(VolumeCommand::Create {
            name,
            size,
            block_size,
            page_size,
            replicas,
            backing,
            admin,
        })) => {
            let a = CreateArgs {
                name: name.clone(),
                size: size.clone(),
                block_size: *block_size,
                page_size: page_size.clone(),
                replicas: *replicas,
                backing: backing.clone(),
            };
            (&admin.admin, Box::new(move |c| c.create(&a)))
        }
        Some(Command::Volume(VolumeCommand::List(admin))) => (&admin.admin, Box::new(|c| c.list())),
        Some(Command::Volume(VolumeCommand::Resize { name, size, admin })) => {
            (&admin.admin, Box::new(move |c| c.resize(name, size)))
        }
        Some(Command::Volume(VolumeCommand::Delete { name, admin })) => {
            (&admin.admin, Box::new(move |c| c.delete(name)))
        }
        Some(Command::Routing(RoutingCommand::Show { name, admin })) => {
            (&admin.admin, Box::new(move |c| c.routing(name)))
        }
        Some(Command::Routing(RoutingCommand::Move {
            name,
            pages,
            to,
            admin,
        })) => (
            &admin.admin,
            Box::new(move |c| c.move_pages(name, pages, *to)),
        ),
        Some(Command::Status(admin)) => (&admin.admin, Box::new(|c| c.status())),
        Some(Command::IoMode { mode, admin }) => {
            (&admin.admin, Box::new(move |c| c.io_mode(mode.as_deref())))
        }
        _ => return None,
    };
    Some(match call(&AdminClient::new(addr)) {
        Ok(text) => {
            print!("{text}");
            Ok(())
        }
        Err(e) => {
            // A message for people, without a backtrace (RUST_BACKTRACE may be set).
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    })
}

#[derive(Debug, Args)]
struct LabArgs {
    /// Number of nodes (node i listens on 127.0.i.1, 127.0.i.2, ...).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// NIC portals per node.
    #[arg(long, default_value_t = 2)]
    nics: u8,
    /// The group portal: discovery and login redirects.
    #[arg(long, default_value = "127.0.0.1:3260")]
    group_portal: std::net::SocketAddr,
    /// Page size of the volumes (bytes or K/M/G), a power of two.
    #[arg(long, default_value = "16M")]
    page_size: String,
    /// Replicas per page besides the primary.
    #[arg(long, default_value_t = 1)]
    replicas: u8,
    /// TCP port of the node portals; each node's inter-node link uses the next.
    #[arg(long, default_value_t = 3260)]
    port: u16,
    /// How a node answers a read of a page another node owns: `forward` (it
    /// gathers the data and builds the response) or `short-cut` (the owner builds
    /// the final PDUs). Switchable at run time with `mosaic io-mode`.
    #[arg(long, default_value = "forward", value_name = "MODE")]
    io_mode: mosaic_target::cluster::store::IoMode,
    /// The admin endpoint (HTTP: volume management, status, Prometheus metrics).
    /// Without the flag, 127.0.0.1:3280 if it is free (another lab may have it);
    /// with it, the lab does not start unless it can bind this address.
    #[arg(long, value_name = "ADDR:PORT")]
    admin: Option<std::net::SocketAddr>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Args, Default, Clone)]
struct ServeArgs {
    /// A TOML configuration file; flags given here override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (repeatable), e.g. 127.0.0.1:3260.
    #[arg(long = "portal", value_name = "ADDR:PORT")]
    portals: Vec<String>,
    /// Directory for file-backed volumes.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A volume: name=NAME,size=64M[,block=512|4096][,backing=file|memory][,path=FILE]
    /// (repeatable). Without any, a 1 GiB file-backed volume `demo` is served.
    #[arg(long = "volume", value_name = "SPEC")]
    volumes: Vec<String>,
    /// Seconds of silence before the target pings a connection (0: never).
    #[arg(long)]
    nop_interval: Option<u64>,
    /// Seconds to wait for a ping's answer before dropping the connection.
    #[arg(long)]
    nop_timeout: Option<u64>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "info", global = true)]
    log: String,
}

fn settings(args: &ServeArgs) -> Result<Settings> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if !args.portals.is_empty() {
        cfg.portals = args.portals.clone();
    }
    if let Some(d) = &args.data_dir {
        cfg.data_dir = d.clone();
    }
    if !args.volumes.is_empty() {
        cfg.volumes = args
            .volumes
            .iter()
            .map(|v| Config::parse_volume_flag(v))
            .collect::<Result<_, _>>()?;
    }
    if cfg.volumes.is_empty() {
        cfg.volumes.push(Config::demo_volume());
    }
    if let Some(n) = args.nop_interval {
        cfg.nop_interval_secs = n;
    }
    if let Some(n) = args.nop_timeout {
        cfg.nop_timeout_secs = n;
    }
    Ok(cfg.validate()?)
}

fn print_banner(settings: &Settings, bound: &[std::net::SocketAddr]) {
    let portal = bound[0];
    println!("Mosaic iSCSI target is running. Volumes:");
    for v in &settings.volumes {
        println!(
            "  {}  {} MiB, {}-byte blocks, {}",
            v.iqn,
            v.size >> 20,
            v.block_size,
            match v.backing {
                mosaic_target::config::Backing::File => format!("file {}", v.path.display()),
                mosaic_target::config::Backing::Memory => "in memory".to_string(),
            }
        );
    }
    let iqn = &settings.volumes[0].iqn;
    let host = portal.ip();
    let port = portal.port();
    println!("Connect with:");
    println!("  iscsi-ls -s iscsi://{host}:{port}");
    println!("  iscsi-inq iscsi://{host}:{port}/{iqn}/0");
    println!("  qemu-img info iscsi://{host}:{port}/{iqn}/0");
    println!("  iscsiadm -m discovery -t sendtargets -p {host}:{port}");
    println!("  iscsiadm -m node -T {iqn} -p {host}:{port} --login");
    println!("Stop with Ctrl-C.");
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Some(result) = run_client(&cli.command) {
        return result;
    }
    let (args, lab) = match cli.command {
        Some(Command::Serve(a)) => (a, None),
        Some(Command::Lab(l)) => (l.serve.clone(), Some(l)),
        Some(
            Command::Volume(_) | Command::Routing(_) | Command::Status(_) | Command::IoMode { .. },
        ) => {
            unreachable!("client commands are run above")
        }
        None => (cli.lab.serve.clone(), Some(cli.lab)),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log))
        .context("--log")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = settings(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("mosaic")
        .build()
        .context("starting the runtime")?;
    if let Some(lab) = lab {
        let page_size = mosaic_target::config::parse_size(&lab.page_size)
            .map_err(|m| anyhow::anyhow!("--page-size: {m}"))?;
        let config = LabConfig {
            nodes: lab.nodes,
            nics: lab.nics,
            group_portal: lab.group_portal,
            page_size,
            replicas: lab.replicas,
            port: lab.port,
            io_mode: lab.io_mode,
        };
        let admin_addr = lab.admin;
        return runtime.block_on(async move {
            let lab = Lab::start(config.clone(), settings.clone()).await?;
            let admin_listener = match admin_addr {
                Some(a) => Some(
                    tokio::net::TcpListener::bind(a)
                        .await
                        .with_context(|| format!("binding the admin endpoint {a}"))?,
                ),
                None => match tokio::net::TcpListener::bind(DEFAULT_ADMIN_ADDR).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(
                            "no admin endpoint: {DEFAULT_ADMIN_ADDR}: {e} (choose one with --admin)"
                        );
                        None
                    }
                },
            };
            let bound = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
            print_lab_banner(&config, &settings, &lab, bound);
            let stop_rx = stop_on_signal();
            let admin_task = admin_listener
                .map(|l| tokio::spawn(admin::serve(Admin::for_lab(&lab), l, stop_rx.clone())));
            let result = lab.run(stop_rx).await;
            if let Some(t) = admin_task {
                t.abort();
            }
            result
        });
    }
    runtime.block_on(async move {
        let server = Server::bind(settings.clone()).await?;
        print_banner(&settings, &server.target().bound);
        let stop_rx = stop_on_signal();
        server.run(stop_rx).await
    })
}

/// A flag that turns `true` on SIGINT or SIGTERM.
fn stop_on_signal() -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("shutting down");
        let _ = stop_tx.send(true);
    });
    stop_rx
}

fn print_lab_banner(
    config: &LabConfig,
    settings: &Settings,
    lab: &Lab,
    admin: Option<std::net::SocketAddr>,
) {
    println!(
        "Mosaic lab cluster is running: {} nodes, {} NICs each.",
        config.nodes, config.nics
    );
    for i in 1..=config.nodes {
        let nics: Vec<String> = (1..=config.nics)
            .map(|j| mosaic_target::cluster::lab::nic_addr(i, j, config.port).to_string())
            .collect();
        println!(
            "  node {i}: portals {} (portal group {i}), link {}",
            nics.join(" "),
            mosaic_target::cluster::lab::link_addr(i, config.port)
        );
    }
    println!(
        "  group portal {} (discovery; logins are redirected)",
        config.group_portal
    );
    let table = lab.states[&1].table();
    for v in &settings.volumes {
        if let Some(map) = table.volume_by_name(&v.name) {
            let mut per_node = std::collections::BTreeMap::new();
            for p in 0..map.page_count() {
                if let Some(n) = map.primary(p) {
                    *per_node.entry(n.0).or_insert(0u64) += 1;
                }
            }
            println!(
                "  {}  {} MiB in {} pages, primaries per node {:?}",
                v.iqn,
                v.size >> 20,
                map.page_count(),
                per_node
            );
        }
    }
    let g = config.group_portal;
    let iqn = &settings.volumes[0].iqn;
    println!("Connect with:");
    println!("  iscsi-ls -s iscsi://{g}");
    println!("  qemu-img info iscsi://{g}/{iqn}/0");
    println!("  iscsiadm -m discovery -t sendtargets -p {g}");
    println!("  iscsiadm -m node -T {iqn} -p {g} --login   (redirected to a node portal)");
    let node1 = mosaic_target::cluster::lab::nic_addr(1, 1, config.port);
    println!("  iscsi-inq iscsi://{node1}/{iqn}/0   (any node portal serves every volume)");
    if let Some(admin) = admin {
        println!("Manage volumes and see the cluster (admin endpoint http://{admin}):");
        println!("  mosaic volume create NAME --size 1G --admin {admin}");
        println!(
            "  mosaic volume list | mosaic routing show NAME | mosaic status  (--admin {admin})"
        );
        println!("  curl http://{admin}/metrics");
    }
    println!("(`mosaic serve` runs a single-node target instead.)");
    println!("Stop with Ctrl-C.");
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_bare_mosaic_takes_the_lab_flags_and_commands_do_not_mix_with_them() {
        let cli = Cli::try_parse_from(["mosaic", "--nodes", "2", "--page-size", "1M"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!((cli.lab.nodes, cli.lab.page_size.as_str()), (2, "1M"));
        let bare = Cli::try_parse_from(["mosaic"]).unwrap();
        assert_eq!((bare.lab.nodes, bare.lab.nics), (3, 2));
        assert_eq!(bare.lab.group_portal.to_string(), "127.0.0.1:3260");
        assert!(Cli::try_parse_from(["mosaic", "--nodes", "2", "serve"]).is_err());
        assert!(matches!(
            Cli::try_parse_from(["mosaic", "serve", "--portal", "127.0.0.1:1"])
                .unwrap()
                .command,
            Some(Command::Serve(_))
        ));
    }
}
