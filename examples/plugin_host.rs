//! A Rust host that runs every Python plugin in `examples/plugins/` concurrently.
//!
//! Each `*.py` there is a plugin module with a `run()` function returning a string. The host
//! calls them all at once on a `WorkerKind::Auto` pool (at least one worker per plugin), prints
//! each result (or error) with its timing, then times the CPU-bound `primes`
//! plugin alone and once per CPU at once.
//!
//! On subinterpreters, `Auto` falls back to a process worker for a plugin whose imports refuse
//! subinterpreters: the `numpy_stats` plugin runs that way where numpy is installed (and says
//! "skipped" otherwise).
//!
//! ```text
//! make plugin-host
//! # or, after `make venv`:
//! tools/in-venv.sh .venv cargo run --release --example plugin_host
//! ```
//!
//! `tools/in-venv.sh` points the build at the venv's Python and puts its `libpython` on
//! `LD_LIBRARY_PATH`. If `VIRTUAL_ENV` is set, the venv's site-packages goes on the workers'
//! `sys.path` too (neither the embedded interpreter nor the process workers' Python, which is the
//! installation's `python3.X`, know about venvs), so a numpy installed there is found.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use interpool::{Error, Pool, WorkerKind};

fn plugin_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "py" {
                return None;
            }
            path.file_stem()?.to_str().map(str::to_owned)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// The venv's `lib/python3.X/site-packages`, if a venv is active.
fn venv_site_packages() -> Option<PathBuf> {
    let venv = PathBuf::from(std::env::var_os("VIRTUAL_ENV")?);
    std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("site-packages")))
        .find(|path| path.is_dir())
}

fn describe(result: &Result<String, Error>) -> String {
    match result {
        Ok(text) => text.clone(),
        Err(Error::Python(e)) => {
            let lines: Vec<&str> = e.traceback.lines().collect();
            let tail = lines[lines.len().saturating_sub(3)..].join("\n        ");
            format!("error: {e}\n      traceback ends with:\n        {tail}")
        }
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/plugins");
    let plugins = plugin_names(&dir)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut python_path = vec![dir.clone()];
    python_path.extend(venv_site_packages());

    let started = Instant::now();
    let pool = Pool::builder()
        .worker_type(WorkerKind::Auto)
        .max_workers(plugins.len().max(cpus))
        .python_path(&python_path)
        .build()?;
    println!(
        "pool: {} workers of type {:?}, built in {:.1?}",
        pool.max_workers(),
        pool.worker_type(),
        started.elapsed()
    );
    if let (Some(fallback), Some(python)) = (pool.fallback_worker_type(), pool.python_executable())
    {
        println!(
            "  plugins that refuse subinterpreters fall back to {fallback:?} workers running {}",
            python.display()
        );
    }

    println!("\nevery plugin once, concurrently:");
    let started = Instant::now();
    let calls: Vec<_> = plugins
        .iter()
        .map(|name| {
            let call = pool.call::<_, String>(&format!("{name}:run"), ());
            tokio::spawn(async move {
                let t = Instant::now();
                let result = call.await;
                (result, t.elapsed())
            })
        })
        .collect();
    for (name, call) in plugins.iter().zip(calls) {
        let (result, took) = call.await?;
        println!("  {name:<12} {took:>10.1?}  {}", describe(&result));
    }
    println!("  all plugins: {:.1?}", started.elapsed());

    if plugins.iter().any(|p| p == "primes") {
        // One call per CPU: with their own GIL, the workers run Python in parallel.
        const LIMIT: i64 = 5_000_000;
        println!("\nprimes:count_primes({LIMIT}), then {cpus} of them at once:");
        let t = Instant::now();
        let count: i64 = pool.call("primes:count_primes", (LIMIT,)).await?;
        let single = t.elapsed();
        println!("  1 call:  {single:>10.1?}  ({count} primes)");
        let t = Instant::now();
        let calls: Vec<_> = (0..cpus)
            .map(|_| tokio::spawn(pool.call::<_, i64>("primes:count_primes", (LIMIT,))))
            .collect();
        for call in calls {
            assert_eq!(call.await??, count);
        }
        let parallel = t.elapsed();
        println!(
            "  {cpus} calls: {parallel:>10.1?}  (speed-up {:.1}x on {cpus} CPUs)",
            cpus as f64 * single.as_secs_f64() / parallel.as_secs_f64()
        );
    }

    pool.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}
