//! Content rules of an `l7` service: each names a server group and one
//! condition on the request (Host, path prefix, a header, a cookie); the
//! first rule whose condition holds picks the group, else the default
//! group does. Built once from the config; matching allocates nothing.

use super::request::Request;

/// One condition on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The Host header's name part (any `:port` dropped), case-insensitive.
    Host(String),
    /// The path (before any `?`) starts with this.
    PathPrefix(String),
    /// A header (name case-insensitive) has exactly this value.
    Header { name: String, value: String },
    /// The Cookie header carries this cookie with exactly this value.
    Cookie { name: String, value: String },
}

/// A condition and the group it sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub when: Condition,
    pub group: u16,
}

/// A service's rules, in order, and its default group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub rules: Vec<Rule>,
    pub default_group: u16,
}

impl Condition {
    pub fn holds(&self, req: &Request) -> bool {
        match self {
            Condition::Host(host) => {
                req.header("host").is_some_and(|h| host_name(h).eq_ignore_ascii_case(host.as_bytes()))
            }
            Condition::PathPrefix(prefix) => {
                let path = req.path.split('?').next().unwrap_or("");
                path.starts_with(prefix.as_str())
            }
            Condition::Header { name, value } => req.header(name) == Some(value.as_bytes()),
            Condition::Cookie { name, value } => req
                .headers()
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
                .flat_map(|(_, v)| v.split(|&b| b == b';'))
                .any(|pair| cookie_is(pair, name.as_bytes(), value.as_bytes())),
        }
    }

    /// Whether every request this one holds for, `other` holds for too (so
    /// a rule with `self` after one with `other` is never reached). Only
    /// conditions of one kind are compared: across kinds nothing is implied.
    pub fn implies(&self, other: &Condition) -> bool {
        match (self, other) {
            (Condition::Host(a), Condition::Host(b)) => a.eq_ignore_ascii_case(b),
            (Condition::PathPrefix(a), Condition::PathPrefix(b)) => a.starts_with(b.as_str()),
            (Condition::Header { name: n1, value: v1 }, Condition::Header { name: n2, value: v2 }) => {
                n1.eq_ignore_ascii_case(n2) && v1 == v2
            }
            (Condition::Cookie { name: n1, value: v1 }, Condition::Cookie { name: n2, value: v2 }) => {
                n1 == n2 && v1 == v2
            }
            _ => false,
        }
    }
}

impl Rules {
    /// The group for a request.
    pub fn choose(&self, req: &Request) -> u16 {
        self.rules.iter().find(|r| r.when.holds(req)).map_or(self.default_group, |r| r.group)
    }

    /// Each rule that can never match because an earlier one matches
    /// whenever it would: (its index, the earlier rule's index).
    pub fn unreachable(&self) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for (i, later) in self.rules.iter().enumerate() {
            if let Some(j) = self.rules[..i].iter().position(|earlier| later.when.implies(&earlier.when)) {
                found.push((i, j));
            }
        }
        found
    }
}

/// A Host header's name, without a port (`[v6]:port` keeps its brackets).
fn host_name(h: &[u8]) -> &[u8] {
    let h = h.trim_ascii();
    match h.iter().rposition(|&b| b == b':') {
        Some(colon) if !h[colon..].contains(&b']') => &h[..colon],
        _ => h,
    }
}

/// Whether one `name=value` pair of a Cookie header is the one asked for.
fn cookie_is(pair: &[u8], name: &[u8], value: &[u8]) -> bool {
    let pair = pair.trim_ascii();
    match pair.iter().position(|&b| b == b'=') {
        Some(eq) => &pair[..eq] == name && &pair[eq + 1..] == value,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::{parse_head, Head};
    use super::*;

    fn host(h: &str) -> Condition {
        Condition::Host(h.into())
    }
    fn prefix(p: &str) -> Condition {
        Condition::PathPrefix(p.into())
    }

    fn rules() -> Rules {
        Rules {
            rules: vec![
                Rule { when: Condition::Cookie { name: "beta".into(), value: "1".into() }, group: 4 },
                Rule { when: host("admin.example.com"), group: 3 },
                Rule { when: prefix("/static/"), group: 1 },
                Rule { when: prefix("/api/"), group: 2 },
                Rule { when: Condition::Header { name: "X-Tier".into(), value: "gold".into() }, group: 5 },
            ],
            default_group: 0,
        }
    }

    fn group_of(head: &str) -> u16 {
        let Head::Complete(req) = parse_head(head.as_bytes()) else { panic!("not a head: {head}") };
        rules().choose(&req)
    }

    #[test]
    fn the_first_matching_rule_picks_the_group() {
        let r =
            |path: &str, extra: &str| group_of(&format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\n{extra}\r\n"));
        assert_eq!(r("/static/a.css", ""), 1);
        assert_eq!(r("/api/v1/users?id=3", ""), 2);
        assert_eq!(r("/apiary", ""), 0, "a prefix is a prefix of the path, /api/ is not /apiary");
        assert_eq!(r("/index.html?x=/static/", ""), 0, "the query is not the path");
        assert_eq!(r("/", "X-Tier: gold\r\n"), 5);
        assert_eq!(r("/", "x-tier: gold\r\n"), 5, "header names are case-insensitive");
        assert_eq!(r("/", "X-Tier: Gold\r\n"), 0, "values are exact");
        assert_eq!(r("/static/a.css", "Cookie: theme=dark; beta=1\r\n"), 4, "the cookie rule comes first");
        assert_eq!(r("/static/a.css", "Cookie: beta=10\r\n"), 1, "beta=10 is not beta=1");
        assert_eq!(r("/static/a.css", "Cookie: xbeta=1\r\n"), 1);
    }

    #[test]
    fn host_matches_its_name_without_port_or_case() {
        for h in ["admin.example.com", "ADMIN.Example.com", "admin.example.com:8443", " admin.example.com "] {
            assert_eq!(group_of(&format!("GET /static/x HTTP/1.1\r\nHost: {h}\r\n\r\n")), 3, "{h:?}");
        }
        assert_eq!(group_of("GET / HTTP/1.1\r\nHost: admin.example.com.evil\r\n\r\n"), 0);
        assert_eq!(group_of("GET / HTTP/1.0\r\n\r\n"), 0, "no Host: the default group");
        assert_eq!(host_name(b"[2001:db8::1]:80"), b"[2001:db8::1]");
        assert_eq!(host_name(b"[2001:db8::1]"), b"[2001:db8::1]");
    }

    #[test]
    fn rules_shadowed_by_earlier_ones_are_found() {
        let r = Rules {
            rules: vec![
                Rule { when: prefix("/api/"), group: 1 },
                Rule { when: prefix("/api/v2/"), group: 2 }, // never: /api/ took it
                Rule { when: host("a.example"), group: 3 },
                Rule { when: host("A.EXAMPLE"), group: 4 }, // never
                Rule { when: prefix("/"), group: 5 },
                Rule { when: prefix("/static/"), group: 6 }, // never: / took it
                Rule { when: Condition::Header { name: "x".into(), value: "1".into() }, group: 7 },
            ],
            default_group: 0,
        };
        assert_eq!(r.unreachable(), vec![(1, 0), (3, 2), (5, 4)]);
        assert!(rules().unreachable().is_empty());
    }
}
