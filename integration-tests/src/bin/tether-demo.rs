//! README command one (`integration-tests/run.sh demo`): the whole stack on
//! loopback with its real dependencies, and a scripted agent that goes
//! through the facade only (`tether_integration_tests::demo`). Prints the
//! story as a timeline and the offboarding request's trace as a waterfall;
//! never a token, key or password.
//!
//! `tether-demo [--keep-running] [--out DIR]`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use tether_integration_tests::demo::{self, Options};
use tether_integration_tests::processes::ProcessStack;

const USAGE: &str = "usage: tether-demo [--keep-running] [--out DIR]";

fn main() -> ExitCode {
    let mut keep_running = false;
    let mut out_dir = PathBuf::from("target/demo");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--keep-running" => keep_running = true,
            "--out" => match args.next() {
                Some(dir) => out_dir = dir.into(),
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(story(keep_running, out_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(64)
}

async fn story(keep_running: bool, out_dir: PathBuf) -> anyhow::Result<()> {
    let here = std::env::current_exe().context("finding this binary")?;
    let bin_dir = here.parent().context("this binary has no directory")?;
    let options = Options {
        services_bin: bin_dir.join("tether-services"),
        tether_bin: bin_dir.join("tether"),
        out_dir,
        verbose: true,
    };
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let (story, stack) = demo::run(&options, otlp).await?;

    println!("\n\u{25b6} the timeline\n");
    print!("{}", story.timeline());
    if let Some((text, svg)) = &story.waterfall {
        println!("\n\u{25b6} the approved offboarding request, one trace across every service\n");
        print!("{text}");
        println!("\n  the same trace as a picture: {}", svg.display());
    }
    if keep_running {
        serve(&stack).await?;
    }
    println!("\n\u{25b6} stopping every service (SIGTERM, drain), OpenBao, PostgreSQL and the IdP");
    stack.shutdown();
    Ok(())
}

/// Keeps the stack up until Ctrl-C, with what an agent needs to use it.
async fn serve(stack: &ProcessStack) -> anyhow::Result<()> {
    let dir = stack.dir();
    let agent_key = dir.join("hr-assistant.pem");
    stack.agent().key.save(&agent_key)?;
    // A fresh user token for alice (the test IdP's), readable by this user
    // only; `tether login` gets another one.
    let login = stack
        .idp
        .login("alice", &["openid", "profile", "email", "hr:read"])
        .await?;
    let token_file = dir.join("alice-user-token");
    write_private(&token_file, &login.access_token)?;
    let addrs = stack.addrs();
    println!(
        "\n\u{25b6} the stack keeps running; point an agent at it (Ctrl-C stops everything)\n\
         \n  facade (AgentGateway)  https://{facade}  (TLS; agents present tokens, no client certificate)\
         \n  CA file                {ca}\
         \n  agent id and key       hr-assistant · {key} (ES256, registered with the identity exchange)\
         \n  token endpoint (aud)   {identity}/token\
         \n  alice's user token     {token} (expires; another: target/debug/tether login --issuer {idp} \\\
         \n                           --resource https://tether.local/api --scope 'openid profile email hr:read' --login-hint alice)\
         \n  alice's phone          {device}\
         \n  HR database            postgresql://127.0.0.1:{pg}/postgres?sslmode=disable (logins come from AcquireCredential)\
         \n  services' configs/logs {dir}\
         \n\nthe Python example agent (examples/python-agent), in another shell:\n\
         \n  export TETHER_FACADE={facade} TETHER_CA_FILE={ca} TETHER_TOKEN_ENDPOINT={identity}/token \\\
         \n         TETHER_AGENT_ID=hr-assistant TETHER_AGENT_KEY={key} TETHER_USER_TOKEN_FILE={token} \\\
         \n         TETHER_DATABASE_URL='postgresql://127.0.0.1:{pg}/postgres?sslmode=disable'\
         \n  .tools/python-agent-venv/bin/python examples/python-agent/agent.py",
        facade = addrs.facade,
        ca = stack.pki().ca_file().display(),
        key = agent_key.display(),
        identity = stack.identity_url(),
        token = token_file.display(),
        idp = stack.idp.issuer(),
        device = stack.idp.device_url("alice")?,
        pg = stack.deps.pg.port(),
        dir = dir.display(),
    );
    // Ctrl-C, or run.sh's own SIGTERM: either way everything is stopped.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(())
}
