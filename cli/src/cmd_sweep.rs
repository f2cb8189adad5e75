//! `mla sweep FILE --out DIR`: the cartesian product of a grid of `mla
//! train` settings, one run directory each under DIR. The file has a
//! `[train]` table of fixed settings and a `[grid]` table of lists, both
//! keyed like a run config (`mla train --config`). Each run is a child
//! `mla train` process (its output in `DIR/NAME.log`), `--jobs N` at a time
//! with the threads split between them. Rerunning the same command skips
//! finished runs and resumes interrupted ones. A grid entry may be a table
//! of keys set together, e.g. a method with settings only it takes.

use crate::config_file::{flag_args, read_toml};
use crate::CliResult;
use clap::Command as ClapCommand;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// The sweep file: `[train]` (fixed `mla train` keys) and `[grid]` (a
    /// list per key; every combination is one run).
    #[arg(value_name = "SWEEP.toml")]
    file: PathBuf,
    /// Directory of the sweep's run directories (one per grid point, named
    /// from its grid values, e.g. `method-joint_seed-1`).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Runs at a time.
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// CPU threads in all, split evenly between the running jobs (unless
    /// the sweep sets `threads`). [default: the machine's CPUs]
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// List the runs, what would happen to each and its `mla train` flags,
    /// without running.
    #[arg(long)]
    dry_run: bool,
}

/// One grid point.
pub struct Point {
    pub name: String,
    /// `mla train` flags: the fixed settings, then the point's values.
    pub flags: Vec<String>,
    /// `epochs` of the point, if the sweep sets it (else `mla train`'s default).
    pub epochs: Option<i64>,
}

/// The grid points of a sweep file, checked key by key against `train`'s flags.
pub fn points(path: &Path, train: &ClapCommand) -> CliResult<Vec<Point>> {
    let shown = path.display();
    let (text, table) = read_toml(path, "sweep file")?;
    let lines = nested_lines(&text);
    for k in table.keys() {
        if k != "train" && k != "grid" {
            return Err(format!(
                "{shown} line {}: `{k}`: a sweep file has a [train] and a [grid] table only",
                lines.get(&(k.clone(), String::new())).copied().unwrap_or(0)
            )
            .into());
        }
    }
    let section = |name: &str| -> CliResult<Vec<(usize, String, toml::Value)>> {
        let Some(v) = table.get(name) else {
            return Ok(Vec::new());
        };
        let toml::Value::Table(t) = v else {
            return Err(format!("{shown}: `{name}` must be a table ([{name}])").into());
        };
        let mut out: Vec<_> = t
            .iter()
            .map(|(k, v)| {
                let line = lines
                    .get(&(name.to_string(), k.clone()))
                    .copied()
                    .unwrap_or(0);
                (line, k.clone(), v.clone())
            })
            .collect();
        out.sort_by_key(|(l, _, _)| *l);
        Ok(out)
    };
    let fixed = section("train")?;
    let grid = section("grid")?;
    let mut base = Vec::new();
    let mut epochs = None;
    for (line, key, value) in &fixed {
        let at = format!("{shown} line {line}: [train] key `{key}`");
        check_sweep_key(key, &at)?;
        if key == "epochs" {
            epochs = value.as_integer();
        }
        base.extend(flag_args(train, key, value, &at)?);
    }
    let mut axes: Vec<(String, Vec<toml::Value>)> = Vec::new();
    for (line, key, value) in &grid {
        let at = format!("{shown} line {line}: [grid] key `{key}`");
        check_sweep_key(key, &at)?;
        if fixed
            .iter()
            .any(|(_, k, _)| k.replace('_', "-") == key.replace('_', "-"))
        {
            return Err(format!("{at} is also in [train]; set it in one table").into());
        }
        let toml::Value::Array(values) = value else {
            return Err(format!("{at} must be a list of values, e.g. [0, 1, 2]").into());
        };
        if values.is_empty() {
            return Err(format!("{at} is an empty list: the grid would have no runs").into());
        }
        for v in values {
            entry(train, key, v, &at)?;
        }
        axes.push((key.clone(), values.clone()));
    }
    // Keys that a grid entry's table sets beside its own axis key must not
    // be set anywhere else: which value would win would be unclear.
    let named = |k: &str| k.replace('_', "-");
    let mut table_keys: BTreeMap<String, String> = BTreeMap::new();
    for (line, key, value) in &grid {
        let at = format!("{shown} line {line}: [grid] key `{key}`");
        for v in value.as_array().into_iter().flatten() {
            let Some(t) = v.as_table() else { continue };
            for k in t.keys().filter(|k| named(k) != named(key)) {
                let axis = table_keys.entry(named(k)).or_insert_with(|| key.clone());
                let elsewhere = fixed
                    .iter()
                    .chain(&grid)
                    .any(|(_, f, _)| named(f) == named(k))
                    || axis != key;
                if elsewhere {
                    return Err(format!(
                        "{at}: `{k}` in an entry's table is also set in [train] or as a [grid] key; set it in one place"
                    )
                    .into());
                }
            }
        }
    }
    let total: usize = axes.iter().map(|(_, v)| v.len()).product();
    if total > 10_000 {
        return Err(format!("{shown}: the grid has {total} runs, more than 10000").into());
    }
    // Each value as flags (once per axis value, not per grid point), and its
    // part of the run name. Entries of one axis that share their own value
    // (`{ method = "mla", hgm = "owm" }` beside `{ method = "mla", hgm =
    // "none" }`) also show their other keys, so that they get distinct names
    // while other names stay short.
    let mut entries: Vec<Vec<(Entry, String)>> = Vec::with_capacity(axes.len());
    for (key, values) in &axes {
        let es = values
            .iter()
            .map(|v| entry(train, key, v, ""))
            .collect::<CliResult<Vec<_>>>()?;
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for e in &es {
            *count.entry(e.label.clone()).or_default() += 1;
        }
        entries.push(
            es.into_iter()
                .map(|e| {
                    let shown = match count[&e.label] {
                        1 => e.label.clone(),
                        _ => e.long_label.clone(),
                    };
                    (e, format!("{}-{shown}", key.replace('_', "-")))
                })
                .collect(),
        );
    }
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        let mut rest = i;
        let mut flags = base.clone();
        let mut name = Vec::new();
        let mut ep = epochs;
        // Last axis fastest: runs are listed in file order.
        let mut picks = vec![0; axes.len()];
        for (a, (_, values)) in axes.iter().enumerate().rev() {
            picks[a] = rest % values.len();
            rest /= values.len();
        }
        for (axis, &p) in entries.iter().zip(&picks) {
            let (e, part) = &axis[p];
            flags.extend(e.flags.iter().cloned());
            if e.epochs.is_some() {
                ep = e.epochs;
            }
            name.push(part.clone());
        }
        let name = if name.is_empty() {
            "run".to_string()
        } else {
            name.join("_")
        };
        out.push(Point {
            name,
            flags,
            epochs: ep,
        });
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &out {
        if !seen.insert(p.name.clone()) {
            return Err(format!(
                "{shown}: two grid points get the run name {}; make the grid values distinguishable",
                p.name
            )
            .into());
        }
    }
    Ok(out)
}

/// One value of a grid axis, as flags.
struct Entry {
    flags: Vec<String>,
    /// Its part of the run name.
    label: String,
    /// The same followed by `+KEY-VALUE` for every other key of its table
    /// (the name where entries of one axis share their own value).
    long_label: String,
    /// `epochs`, where the entry sets it.
    epochs: Option<i64>,
}

/// A grid axis's value: a plain value of its key, or a table of keys set
/// together (`{ method = "gblending", gblending-every = 0 }`: settings that
/// only one method takes), which must hold the axis key itself (the run name
/// shows that value).
fn entry(train: &ClapCommand, key: &str, v: &toml::Value, at: &str) -> CliResult<Entry> {
    let is_epochs = |k: &str| k.replace('_', "-") == "epochs";
    let toml::Value::Table(t) = v else {
        return Ok(Entry {
            flags: flag_args(train, key, v, at)?,
            label: label(v),
            long_label: label(v),
            epochs: if is_epochs(key) { v.as_integer() } else { None },
        });
    };
    let own = t
        .iter()
        .find(|(k, _)| k.replace('_', "-") == key.replace('_', "-"));
    let Some((_, own)) = own else {
        return Err(format!(
            "{at}: an entry's table must set `{key}` itself (it names the run), e.g. {{ {key} = ..., other-key = ... }}"
        )
        .into());
    };
    if own.is_table() {
        return Err(format!("{at}: `{key}` inside an entry's table takes one value").into());
    }
    let mut flags = flag_args(train, key, own, at)?;
    let mut epochs = if is_epochs(key) {
        own.as_integer()
    } else {
        None
    };
    let mut long_label = label(own);
    for (k, val) in t
        .iter()
        .filter(|(k, _)| k.replace('_', "-") != key.replace('_', "-"))
    {
        long_label.push_str(&format!("+{}-{}", k.replace('_', "-"), label(val)));
        let at = format!("{at}, `{k}` in an entry's table");
        check_sweep_key(k, &at)?;
        flags.extend(flag_args(train, k, val, &at)?);
        if is_epochs(k) {
            epochs = val.as_integer();
        }
    }
    Ok(Entry {
        flags,
        label: label(own),
        long_label,
        epochs,
    })
}

fn check_sweep_key(key: &str, at: &str) -> CliResult {
    match key.replace('_', "-").as_str() {
        "out" | "quiet" => Err(format!("{at}: the sweep sets it for every run").into()),
        _ => Ok(()),
    }
}

/// A value as part of a run name: a path's last component, everything but
/// letters, digits, `.` and `-` replaced by `-`.
fn label(v: &toml::Value) -> String {
    let raw = match v {
        toml::Value::String(s) => Path::new(s)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| s.clone()),
        other => other.to_string(),
    };
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Lines of `table.key` (and of `key` alone under `(key, "")`).
fn nested_lines(text: &str) -> BTreeMap<(String, String), usize> {
    type Spanned = toml::Spanned<toml::Value>;
    let line = |start: usize| text[..start].matches('\n').count() + 1;
    let mut out = BTreeMap::new();
    let top: BTreeMap<String, toml::Spanned<BTreeMap<String, Spanned>>> =
        toml::from_str(text).unwrap_or_default();
    for (k, t) in top {
        out.insert((k.clone(), String::new()), line(t.span().start));
        for (kk, v) in t.into_inner() {
            out.insert((k.clone(), kk), line(v.span().start));
        }
    }
    out
}

/// What the sweep does with a point's run directory.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// `summary.json` covers every epoch.
    Done,
    /// A run was started there: `--resume` it.
    Partial,
    /// Nothing there yet (or only the leftovers of a run killed before it
    /// wrote its config): a fresh run.
    New,
}

pub fn state_of(dir: &Path, epochs: i64) -> State {
    // A summary that covers every epoch is a finished run, with or without
    // config.json (runs kept from before the sweep files have only their
    // summary and the flags they were started with).
    let done = std::fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["epochs"].as_i64())
        .is_some_and(|e| e >= epochs);
    if done {
        State::Done
    } else if dir.join("config.json").is_file() {
        State::Partial
    } else {
        State::New
    }
}

pub fn run(args: Args, train: &ClapCommand) -> CliResult {
    if args.jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    if args.threads == Some(0) {
        return Err("--threads must be at least 1".into());
    }
    let points = points(&args.file, train)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_run = (args.threads.unwrap_or(cpus) / args.jobs).max(1);
    // `mla train`'s default epochs, for a sweep that does not set them.
    let default_epochs = mla_models::trainer::TrainConfig::default().epochs as i64;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| format!("cannot create {}: {e}", args.out.display()))?;
    let mut todo = Vec::new();
    let mut done = 0usize;
    for p in &points {
        let dir = args.out.join(&p.name);
        let st = state_of(&dir, p.epochs.unwrap_or(default_epochs));
        if args.dry_run {
            println!(
                "{:<8} {}  (mla train {})",
                format!("{st:?}").to_lowercase(),
                dir.display(),
                p.flags.join(" ")
            );
        }
        match st {
            State::Done => done += 1,
            st => todo.push((p, st)),
        }
    }
    if args.dry_run {
        return Ok(());
    }
    let total = points.len();
    eprintln!(
        "sweep {}: {total} runs ({done} already done), {} at a time, {per_run} thread{} each; logs in {}/NAME.log",
        args.file.display(),
        args.jobs,
        if per_run == 1 { "" } else { "s" },
        args.out.display()
    );
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the mla binary: {e}"))?;
    let started = Instant::now();
    let mut running: Vec<(String, Child, Instant)> = Vec::new();
    let mut failed = Vec::new();
    let mut finished = 0usize;
    let mut queue = todo.into_iter();
    loop {
        while running.len() < args.jobs {
            let Some((p, st)) = queue.next() else { break };
            let dir = args.out.join(&p.name);
            let log_path = args.out.join(format!("{}.log", p.name));
            let log = std::fs::File::create(&log_path)
                .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("train");
            match st {
                State::Partial => {
                    cmd.arg("--resume").arg(&dir);
                    if let Some(e) = p.epochs {
                        cmd.arg("--epochs").arg(e.to_string());
                    }
                }
                _ => {
                    cmd.args(&p.flags).arg("--out").arg(&dir).arg("--overwrite");
                    if !p.flags.iter().any(|f| f == "--threads") {
                        cmd.arg("--threads").arg(per_run.to_string());
                    }
                }
            }
            if st == State::Partial {
                cmd.arg("--threads").arg(per_run.to_string());
            }
            cmd.arg("--quiet")
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log);
            let child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
            eprintln!(
                "[sweep] start {} ({})",
                p.name,
                if st == State::Partial {
                    "resumed"
                } else {
                    "new"
                }
            );
            running.push((p.name.clone(), child, Instant::now()));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut i = 0;
        while i < running.len() {
            let status = running[i]
                .1
                .try_wait()
                .map_err(|e| format!("waiting for {}: {e}", running[i].0))?;
            let Some(status) = status else {
                i += 1;
                continue;
            };
            let (name, _, t0) = running.remove(i);
            finished += 1;
            let ok = status.success();
            if !ok {
                failed.push(name.clone());
            }
            let remaining = total - done - finished;
            // Wall time per finished run so far (parallel runs included).
            let eta = started.elapsed().as_secs_f64() / finished as f64 * remaining as f64;
            eprintln!(
                "[sweep] {} {name} in {:.0} s; {}/{total} done{}, {} running, elapsed {}, ETA {}",
                if ok { "done" } else { "FAILED" },
                t0.elapsed().as_secs_f64(),
                done + finished - failed.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} failed)", failed.len())
                },
                running.len(),
                clock(started.elapsed().as_secs_f64()),
                clock(eta)
            );
        }
    }
    if !failed.is_empty() {
        return Err(format!(
            "{} of {total} runs failed: {} (see {}/NAME.log); rerun the sweep to retry them",
            failed.len(),
            failed.join(", "),
            args.out.display()
        )
        .into());
    }
    eprintln!(
        "[sweep] all {total} runs done in {}",
        clock(started.elapsed().as_secs_f64())
    );
    Ok(())
}

fn clock(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
}
