//! `mosaic`: the Mosaic iSCSI target.
//!
//! `mosaic` alone serves a 1 GiB demo volume on 127.0.0.1:3260 from a sparse file
//! under `./data`; `mosaic serve --help` lists what can be changed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
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
}

#[derive(Debug, Args, Default)]
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
    #[arg(long, default_value = "info")]
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
    let args = match cli.command {
        Some(Command::Serve(a)) => a,
        None => ServeArgs {
            log: "info".into(),
            ..ServeArgs::default()
        },
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
    runtime.block_on(async move {
        let server = Server::bind(settings.clone()).await?;
        print_banner(&settings, &server.target().bound);
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("shutting down");
            let _ = stop_tx.send(true);
        });
        server.run(stop_rx).await
    })
}
