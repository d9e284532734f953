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
}

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
    let mut o = String::from("    l7:\n      rules:\n");
    if cfg.rules.rules.is_empty() {
        o = String::from("    l7: { rules: [] }\n");
    }
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
