//! `mla train --config FILE`: every `mla train` flag as a TOML key of the
//! same name (`-` may be written `_`). The file's keys become flags placed
//! before the command line's own, and `train` lets a later occurrence of a
//! flag replace an earlier one, so the command line overrides the file.
//! Each key is checked on its own against the flag's parser, so a wrong
//! type or an unknown key is an error naming the file, the line and the key.
//!
//! The run directory gets the resolved flags as `config.toml` (with the
//! dataset, backend and thread count actually used), so that
//! `mla train --config RUN_DIR/config.toml --out NEW` reruns the same
//! configuration.

use crate::CliResult;
use clap::{ArgAction, ArgMatches, Command};
use std::ffi::OsString;
use std::path::Path;

/// Larger config files are refused before they are read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Flags a config file cannot set: the file itself, run-directory actions
/// and joining an MPI job, which only make sense on a command line.
const NOT_IN_FILE: [&str; 5] = ["config", "resume", "help", "overwrite", "distributed"];

/// Flags left out of the resolved `config.toml`: where the run went, how it
/// was shown, and the dataset's sources (the resolved `data` replaces them).
const NOT_RESOLVED: [&str; 9] = [
    "distributed",
    "config",
    "resume",
    "help",
    "overwrite",
    "out",
    "quiet",
    "raw",
    "cache-dir",
];

/// `argv` with the keys of `train --config FILE` inserted as flags right
/// after `train`; unchanged for any other command or without `--config`.
pub fn expand(argv: Vec<OsString>, train: &Command) -> CliResult<Vec<OsString>> {
    if argv.get(1).and_then(|a| a.to_str()) != Some("train") {
        return Ok(argv);
    }
    let mut path = None;
    let mut i = 2;
    while i < argv.len() {
        let a = argv[i].to_string_lossy();
        let found = if a == "--config" {
            i += 1;
            Some(
                argv.get(i)
                    .ok_or("--config needs a file: --config FILE")?
                    .clone(),
            )
        } else {
            a.strip_prefix("--config=").map(OsString::from)
        };
        if let Some(p) = found {
            if path.replace(p).is_some() {
                return Err("--config given twice; pass one file".into());
            }
        }
        i += 1;
    }
    let Some(path) = path else {
        return Ok(argv);
    };
    let flags = flags_of(Path::new(&path), train)?;
    let mut out = argv[..2].to_vec();
    out.extend(flags.into_iter().map(OsString::from));
    out.extend_from_slice(&argv[2..]);
    Ok(out)
}

/// The flags the config file at `path` sets, in file order.
pub fn flags_of(path: &Path, train: &Command) -> CliResult<Vec<String>> {
    let shown = path.display();
    let (text, table) = read_toml(path, "--config")?;
    let lines = key_lines(&text);
    let mut keyed: Vec<(usize, String, toml::Value)> = table
        .into_iter()
        .map(|(k, v)| (lines.get(&k).copied().unwrap_or(0), k, v))
        .collect();
    keyed.sort_by_key(|(line, _, _)| *line);
    let mut flags = Vec::new();
    for (line, key, value) in keyed {
        let at = format!("{shown} line {line}: key `{key}`");
        flags.extend(flag_args(train, &key, &value, &at)?);
    }
    Ok(flags)
}

/// The flags of one key: `["--flag", "value"]`, `["--switch"]` or none (a
/// switch set to false); checked by the flag's own parser, so that an
/// error says `at` (where the key was read).
pub fn flag_args(
    train: &Command,
    key: &str,
    value: &toml::Value,
    at: &str,
) -> CliResult<Vec<String>> {
    let long = key.replace('_', "-");
    let Some(arg) = train
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
    else {
        return Err(format!(
            "{at} is not a flag of `mla train`; the keys are: {}",
            keys(train)
        )
        .into());
    };
    if NOT_IN_FILE.contains(&long.as_str()) {
        return Err(format!(
            "{at} cannot be set in a config file; pass --{long} on the command line"
        )
        .into());
    }
    let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
    let value = match (value, is_switch) {
        (toml::Value::Boolean(on), true) => {
            return Ok(if *on {
                vec![format!("--{long}")]
            } else {
                Vec::new()
            })
        }
        (_, true) => return Err(format!("{at} is a switch: true or false").into()),
        (toml::Value::String(s), false) => s.clone(),
        (toml::Value::Integer(i), false) => i.to_string(),
        (toml::Value::Float(f), false) => f.to_string(),
        (toml::Value::Boolean(_), false) => {
            return Err(format!("{at} takes a value, not true/false").into())
        }
        (other, false) => {
            return Err(format!("{at} takes one value (got a TOML {})", other.type_str()).into())
        }
    };
    // The flag's own parser, on this key alone: its error names the line.
    let probe = [
        OsString::from("train"),
        OsString::from(format!("--{long}")),
        OsString::from(&value),
    ];
    if let Err(e) = train.clone().try_get_matches_from(probe) {
        let msg = e.to_string();
        let first = msg
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("error: ");
        return Err(format!("{at}: {first}").into());
    }
    Ok(vec![format!("--{long}"), value])
}

/// The 1-based line of each top-level key of a TOML text (0 if unknown).
pub fn key_lines(text: &str) -> std::collections::BTreeMap<String, usize> {
    let spans: std::collections::BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(text).unwrap_or_default();
    spans
        .into_iter()
        .map(|(k, v)| {
            let line = text[..v.span().start].matches('\n').count() + 1;
            (k, line)
        })
        .collect()
}

/// Reads a TOML file of at most [`MAX_CONFIG_BYTES`] (regular files only).
pub fn read_toml(path: &Path, what: &str) -> CliResult<(String, toml::Table)> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{what} {shown}: not a regular file").into());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{what} {shown}: {} bytes, more than the {MAX_CONFIG_BYTES} such a file may have",
            meta.len()
        )
        .into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{what} {shown}: {e}"))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
    Ok((text, table))
}

fn keys(train: &Command) -> String {
    train
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_FILE.contains(l))
        .map(|l| l.replace('-', "_"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The flags `m` resolved to (defaults included), as a TOML table with `_`
/// keys: switches that are on, and every option that has a value.
pub fn resolved(train: &Command, m: &ArgMatches) -> toml::Table {
    let mut t = toml::Table::new();
    for arg in train.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_RESOLVED.contains(&long) {
            continue;
        }
        let key = long.replace('-', "_");
        let id = arg.get_id().as_str();
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            if m.get_flag(id) {
                t.insert(key, toml::Value::Boolean(true));
            }
            continue;
        }
        if let Some(v) = m.get_raw(id).and_then(|mut v| v.next()) {
            t.insert(key, typed(&v.to_string_lossy()));
        }
    }
    t
}

/// A flag's text as the TOML value that reads back to the same text.
pub fn typed(s: &str) -> toml::Value {
    if let Ok(i) = s.parse::<i64>() {
        if i.to_string() == s {
            return toml::Value::Integer(i);
        }
    }
    if let Ok(f) = s.parse::<f64>() {
        let numeric = s.chars().all(|c| c.is_ascii_digit() || ".eE+-".contains(c));
        if f.is_finite() && numeric && s.contains(['.', 'e', 'E']) {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(s.to_string())
}

/// `config.toml`'s text: a header saying how to reuse it, then the table.
pub fn render(t: &toml::Table) -> CliResult<String> {
    let body = toml::to_string(t).map_err(|e| format!("cannot write config.toml: {e}"))?;
    Ok(format!(
        "# The resolved `mla train` flags of this run (keys are flag names, `-` written `_`).\n\
         # `mla train --config THIS_FILE --out NEW_DIR` trains the same configuration;\n\
         # flags given on the command line override these.\n{body}"
    ))
}
