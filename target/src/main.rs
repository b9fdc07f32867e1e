//! `mosaic`: the Mosaic iSCSI target.
//!
//! `mosaic` alone serves a 1 GiB demo volume on 127.0.0.1:3260 from a sparse file
//! under `./data`; `mosaic serve --help` lists what can be changed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mosaic_target::cluster::lab::{Lab, LabConfig};
use mosaic_target::config::{Config, Settings};
use mosaic_target::server::Server;
use tokio::sync::watch;
use tracing::info;

#[derive(Debug, Parser)]
#[command(name = "mosaic", version, about = "Mosaic iSCSI target")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve volumes over iSCSI (the default).
    Serve(ServeArgs),
    /// Run a lab cluster: several nodes in this process, each volume spread over
    /// all of them by pages, a group portal for discovery and redirected logins.
    Lab(LabArgs),
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
    let (args, lab) = match cli.command {
        Some(Command::Serve(a)) => (a, None),
        Some(Command::Lab(l)) => (l.serve.clone(), Some(l)),
        None => (
            ServeArgs {
                log: "info".into(),
                ..ServeArgs::default()
            },
            None,
        ),
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
        };
        return runtime.block_on(async move {
            let lab = Lab::start(config.clone(), settings.clone()).await?;
            print_lab_banner(&config, &settings, &lab);
            let stop_rx = stop_on_signal();
            lab.run(stop_rx).await
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

fn print_lab_banner(config: &LabConfig, settings: &Settings, lab: &Lab) {
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
    println!("Stop with Ctrl-C.");
}
