//! A `mode: l7` service's `l7:` section: content rules, each naming a
//! server group and one condition on the request, tried in order; the
//! service's `group` is the default group.

use super::{ConfigError, Ctx};
use crate::l7::rules::{Condition, Rule, Rules};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawL7 {
    #[serde(default)]
    rules: Vec<RawRule>,
    /// Statuses that send the request to another server of the group when
    /// they are a server's answer (default 502, 503, 504).
    #[serde(default)]
    redirect_on: Option<Spanned<Vec<u16>>>,
    /// How many other servers a request may be sent to (default 2).
    #[serde(default)]
    retries: Option<Spanned<u8>>,
    /// `first` (default): the SYN goes to one server; `race`: to `fanout`
    /// servers at once, and the first to answer gets the request (SYN
    /// multicast).
    #[serde(default)]
    connect: Option<Spanned<String>>,
    #[serde(default)]
    fanout: Option<Spanned<u8>>,
}

/// One rule: exactly one of the conditions, and the group it sends to.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    #[serde(default)]
    host: Option<Spanned<String>>,
    #[serde(default)]
    path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    header: Option<RawNameValue>,
    #[serde(default)]
    cookie: Option<RawNameValue>,
    pub(super) group: Spanned<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNameValue {
    name: Spanned<String>,
    value: Spanned<String>,
}

/// An `l7` service's routing: its groups (index 0 the default) with the
/// service's server ids of each, and the rules over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Config {
    pub groups: Vec<L7Group>,
    pub rules: Rules,
    pub redirect: Redirect,
}

/// Transparent error redirect: which answers count as a server's failure,
/// and how many more servers a request may try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub on_status: Vec<u16>,
    pub retries: u8,
    /// How many servers the SYN goes to at once (1: `connect: first`).
    pub fanout: u8,
}

/// `connect: race` sends the SYN to at most this many servers.
pub const MAX_FANOUT: u8 = 4;

pub const DEFAULT_REDIRECT_ON: [u16; 3] = [502, 503, 504];
pub const DEFAULT_RETRIES: u8 = 2;
/// At most this many other servers (each costs the client a round trip to a server).
pub const MAX_RETRIES: u8 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Group {
    pub name: String,
    /// Positions in the service's `servers`.
    pub members: Vec<u16>,
}

impl RawL7 {
    /// The groups the rules name, in order of first mention, after the
    /// default group.
    pub(super) fn group_names<'a>(&'a self, default: &'a str) -> Vec<&'a Spanned<String>> {
        let mut names: Vec<&Spanned<String>> = Vec::new();
        for r in &self.rules {
            if r.group.value != default && !names.iter().any(|n| n.value == r.group.value) {
                names.push(&r.group);
            }
        }
        names
    }

    /// The redirect settings, checked.
    pub(super) fn redirect(&self, cx: &Ctx, key: &str) -> Result<Redirect, ConfigError> {
        let on_status = match &self.redirect_on {
            None => DEFAULT_REDIRECT_ON.to_vec(),
            Some(list) => {
                if let Some(bad) = list.value.iter().find(|s| !(400..=599).contains(*s)) {
                    return Err(cx.at(list, format!("{key}.redirect_on: {bad} is not an error status (400..=599)")));
                }
                list.value.clone()
            }
        };
        let retries = match &self.retries {
            None => DEFAULT_RETRIES,
            Some(r) if r.value <= MAX_RETRIES => r.value,
            Some(r) => return Err(cx.at(r, format!("{key}.retries: {} is over {MAX_RETRIES}", r.value))),
        };
        let race = match &self.connect {
            None => false,
            Some(c) if c.value == "first" || c.value == "race" => c.value == "race",
            Some(c) => return Err(cx.at(c, format!("{key}.connect: '{}' is neither first nor race", c.value))),
        };
        let fanout = match (race, &self.fanout) {
            (false, None) => 1,
            (false, Some(f)) => return Err(cx.at(f, format!("{key}.fanout: only with connect: race"))),
            (true, None) => 2,
            (true, Some(f)) if (2..=MAX_FANOUT).contains(&f.value) => f.value,
            (true, Some(f)) => {
                return Err(cx.at(f, format!("{key}.fanout: {} is not between 2 and {MAX_FANOUT}", f.value)));
            }
        };
        Ok(Redirect { on_status, retries, fanout })
    }

    /// The rules over `groups` (names, the default first), checked: one
    /// condition each, none empty, none shadowed by an earlier one.
    pub(super) fn rules(&self, cx: &Ctx, key: &str, groups: &[String]) -> Result<Rules, ConfigError> {
        let mut rules = Vec::new();
        for (i, r) in self.rules.iter().enumerate() {
            let at = format!("{key}.rules[{i}]");
            let mut conditions = Vec::new();
            if let Some(h) = &r.host {
                conditions.push((Condition::Host(non_empty(cx, h, &format!("{at}.host"))?), &r.group));
            }
            if let Some(p) = &r.path_prefix {
                let prefix = non_empty(cx, p, &format!("{at}.path_prefix"))?;
                if !prefix.starts_with('/') {
                    return Err(cx.at(p, format!("{at}.path_prefix: '{prefix}' does not start with '/'")));
                }
                conditions.push((Condition::PathPrefix(prefix), &r.group));
            }
            if let Some(h) = &r.header {
                let name = non_empty(cx, &h.name, &format!("{at}.header.name"))?;
                let value = h.value.value.clone();
                conditions.push((Condition::Header { name, value }, &r.group));
            }
            if let Some(c) = &r.cookie {
                let name = non_empty(cx, &c.name, &format!("{at}.cookie.name"))?;
                let value = c.value.value.clone();
                conditions.push((Condition::Cookie { name, value }, &r.group));
            }
            if conditions.len() != 1 {
                return Err(cx.at(
                    &r.group,
                    format!("{at}: needs exactly one of host, path_prefix, header, cookie (has {})", conditions.len()),
                ));
            }
            let (when, group) = conditions.remove(0);
            let Some(g) = groups.iter().position(|n| *n == group.value) else {
                return Err(cx.at(group, format!("{at}.group: unknown server group '{}'", group.value)));
            };
            rules.push(Rule { when, group: g as u16 });
        }
        let rules = Rules { rules, default_group: 0 };
        if let Some(&(later, earlier)) = rules.unreachable().first() {
            return Err(cx.at(
                &self.rules[later].group,
                format!(
                    "{key}.rules[{later}]: never matches: rules[{earlier}] ({}) matches every request it would",
                    describe(&rules.rules[earlier].when)
                ),
            ));
        }
        Ok(rules)
    }
}

fn non_empty(cx: &Ctx, s: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    if s.value.is_empty() {
        return Err(cx.at(s, format!("{key}: empty")));
    }
    Ok(s.value.clone())
}

/// A condition as the config wrote it.
pub fn describe(c: &Condition) -> String {
    match c {
        Condition::Host(h) => format!("host: {h}"),
        Condition::PathPrefix(p) => format!("path_prefix: {p}"),
        Condition::Header { name, value } => format!("header: {name}: {value}"),
        Condition::Cookie { name, value } => format!("cookie: {name}={value}"),
    }
}

/// The `l7:` section written back (for `ringlb check`'s output).
pub(super) fn render(cfg: &L7Config, yaml_str: impl Fn(&str) -> String) -> String {
    let statuses: Vec<String> = cfg.redirect.on_status.iter().map(u16::to_string).collect();
    let connect = match cfg.redirect.fanout {
        1 => String::from("first"),
        k => format!("race\n      fanout: {k}"),
    };
    let mut o = format!(
        "    l7:\n      redirect_on: [{}]\n      retries: {}\n      connect: {connect}\n      rules:{}\n",
        statuses.join(", "),
        cfg.redirect.retries,
        if cfg.rules.rules.is_empty() { " []" } else { "" }
    );
    for r in &cfg.rules.rules {
        let group = yaml_str(&cfg.groups[usize::from(r.group)].name);
        let when = match &r.when {
            Condition::Host(h) => format!("host: {}", yaml_str(h)),
            Condition::PathPrefix(p) => format!("path_prefix: {}", yaml_str(p)),
            Condition::Header { name, value } => {
                format!("header: {{ name: {}, value: {} }}", yaml_str(name), yaml_str(value))
            }
            Condition::Cookie { name, value } => {
                format!("cookie: {{ name: {}, value: {} }}", yaml_str(name), yaml_str(value))
            }
        };
        o.push_str(&format!("        - {{ {when}, group: {group} }}\n"));
    }
    o
}
