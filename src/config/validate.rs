//! What serde cannot check: addresses, the route list's shape, TLS and
//! `[auth]` rules, command lists. Every error names its field.

use super::{AuthConfig, CommandsConfig, Settings};

impl Settings {
    /// Checks what serde cannot: the route list's shape and the addresses.
    /// Errors are `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_address("listen.address", &self.listen.address)?;
        if self.listen.workers.is_some_and(|n| n == 0 || n > 1024) {
            return Err(("listen.workers".into(), "must be between 1 and 1024".into()));
        }
        self.validate_tls()?;
        if let Some(auth) = &self.auth {
            validate_auth(auth)?;
        }
        if let Some(f) = &self.fleet {
            if f.name.is_empty() || f.name.contains(['{', '}']) {
                return Err((
                    "fleet.name".into(),
                    "must be a non-empty name without braces".into(),
                ));
            }
            if f.heartbeat_ms < 10 {
                return Err(("fleet.heartbeat_ms".into(), "must be at least 10".into()));
            }
        }
        check_address("upstreams.old.address", &self.upstreams.old.address)?;
        check_address("upstreams.new.address", &self.upstreams.new.address)?;
        for (side, up) in [("old", &self.upstreams.old), ("new", &self.upstreams.new)] {
            for seed in &up.seeds {
                check_address(&format!("upstreams.{side}.seeds"), seed)?;
            }
            if !up.seeds.is_empty() && !up.cluster {
                return Err((
                    format!("upstreams.{side}.seeds"),
                    "seeds are for a clustered cache: set cluster = true".into(),
                ));
            }
            if up.shared_per_node == 0 || up.shared_per_node > 64 {
                return Err((
                    format!("upstreams.{side}.shared_per_node"),
                    "must be between 1 and 64".into(),
                ));
            }
            if up.cluster && up.db != 0 {
                return Err((
                    format!("upstreams.{side}.db"),
                    "a Redis Cluster has database 0 only".into(),
                ));
            }
        }
        for (side, up) in [("old", &self.upstreams.old), ("new", &self.upstreams.new)] {
            if up.username.is_some() && up.password.is_none() {
                return Err((
                    format!("upstreams.{side}.username"),
                    "a username needs a password".into(),
                ));
            }
            if up.connect_timeout_ms == 0 {
                return Err((
                    format!("upstreams.{side}.connect_timeout_ms"),
                    "must be greater than 0".into(),
                ));
            }
        }
        for (key, list) in [
            ("allow", &self.commands.allow),
            ("deny", &self.commands.deny),
        ] {
            for (i, name) in CommandsConfig::normalized(list).iter().enumerate() {
                if !crate::commands::is_known_name(name) {
                    return Err((
                        format!("commands.{key}[{i}]"),
                        format!("'{}' is not a command cutover knows", list[i]),
                    ));
                }
                if key == "allow" && crate::commands::never_carried(name) {
                    return Err((
                        format!("commands.{key}[{i}]"),
                        format!(
                            "'{}' cannot run through a proxy and cannot be allowed",
                            list[i]
                        ),
                    ));
                }
            }
        }
        self.validate_routes()?;
        if self.limits.maxclients == 0 {
            return Err(("limits.maxclients".into(), "must be greater than 0".into()));
        }
        if self.admin.enabled {
            check_address("admin.address", &self.admin.address)?;
            let host = self.admin.address.rsplit_once(':').map_or("", |(h, _)| h);
            let loopback = host == "localhost"
                || host
                    .trim_matches(['[', ']'])
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if !loopback && self.admin.token.is_none() {
                return Err((
                    "admin.token".into(),
                    format!(
                        "the admin listener on {} is reachable from other hosts; set a token (CUTOVER_ADMIN__TOKEN) or listen on loopback",
                        self.admin.address
                    ),
                ));
            }
            if self
                .admin
                .token
                .as_ref()
                .is_some_and(|t| t.expose().is_empty())
            {
                return Err(("admin.token".into(), "must not be empty".into()));
            }
        }
        Ok(())
    }
}

impl Settings {
    /// The route list: names, fractions, the default route last.
    fn validate_routes(&self) -> Result<(), (String, String)> {
        if self.routes.is_empty() {
            return Err((
                "routes".into(),
                "at least one route is required: the default route, without `patterns`".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let last = self.routes.len() - 1;
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            if r.name.is_empty() {
                return Err((format!("{field}.name"), "must not be empty".into()));
            }
            if let Some(a) = &r.auto_cutover {
                let fraction = |name: &str, v: f64| {
                    if (0.0..=1.0).contains(&v) {
                        Ok(())
                    } else {
                        Err((
                            format!("{field}.auto_cutover.{name}"),
                            "must be a fraction from 0.0 to 1.0".to_string(),
                        ))
                    }
                };
                fraction("min_agreement", a.min_agreement)?;
                fraction("max_new_error_rate", a.max_new_error_rate)?;
                if r.shadow_reads == 0.0 {
                    return Err((
                        format!("{field}.auto_cutover"),
                        "needs shadow_reads > 0 on the route: shadow agreement is what it decides on".into(),
                    ));
                }
                if a.error_window_secs == 0 {
                    return Err((
                        format!("{field}.auto_cutover.error_window_secs"),
                        "must be at least 1".into(),
                    ));
                }
            }
            if !(0.0..=1.0).contains(&r.shadow_reads) {
                return Err((
                    format!("{field}.shadow_reads"),
                    "must be a fraction from 0.0 to 1.0".into(),
                ));
            }
            if r.ramp_percent.is_some_and(|p| p > 100) {
                return Err((format!("{field}.ramp_percent"), "must be 0 to 100".into()));
            }
            if !names.insert(r.name.as_str()) {
                return Err((
                    format!("{field}.name"),
                    format!("duplicate route name {:?}", r.name),
                ));
            }
            match &r.patterns {
                None if i != last => {
                    return Err((
                        format!("{field}.patterns"),
                        format!(
                            "route {:?} has no patterns, so it is the default route, and the default route must be the last one",
                            r.name
                        ),
                    ))
                }
                Some(_) if i == last => {
                    return Err((
                        format!("{field}.patterns"),
                        format!("the last route ({:?}) must be the default route, without `patterns`", r.name),
                    ))
                }
                Some(p) if p.is_empty() => {
                    return Err((format!("{field}.patterns"), "must not be empty; omit it only on the default route".into()))
                }
                Some(p) if p.iter().any(String::is_empty) => {
                    return Err((format!("{field}.patterns"), "a pattern must not be empty".into()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), (String, String)> {
        let l = &self.listen;
        let err = |field: &str, message: &str| Err((field.to_string(), message.to_string()));
        match (&l.tls_cert_file, &l.tls_key_file) {
            (Some(_), None) => return err("listen.tls_key_file", "tls_cert_file needs its key"),
            (None, Some(_)) => {
                return err("listen.tls_cert_file", "tls_key_file needs its certificate")
            }
            _ => {}
        }
        if !l.tls() {
            for (field, set) in [
                ("plain_address", l.plain_address.is_some()),
                ("tls_client_ca_file", l.tls_client_ca_file.is_some()),
                ("tls_min_version", l.tls_min_version.is_some()),
            ] {
                if set {
                    return err(
                        &format!("listen.{field}"),
                        "needs TLS on the listener: set tls_cert_file and tls_key_file",
                    );
                }
            }
        }
        if let Some(a) = &l.plain_address {
            check_address("listen.plain_address", a)?;
        }
        if let Some(a) = &l.announce {
            check_address("listen.announce", a)?;
            if !l.cluster {
                return err("listen.announce", "only used with cluster = true");
            }
        }
        for (side, up) in [("old", &self.upstreams.old), ("new", &self.upstreams.new)] {
            let field = |name: &str| format!("upstreams.{side}.{name}");
            if !up.tls {
                for (name, set) in [
                    ("ca_file", up.ca_file.is_some()),
                    ("server_name", up.server_name.is_some()),
                    ("client_cert_file", up.client_cert_file.is_some()),
                    ("client_key_file", up.client_key_file.is_some()),
                    ("tls_min_version", up.tls_min_version.is_some()),
                    ("insecure_skip_verify", up.insecure_skip_verify),
                ] {
                    if set {
                        return err(&field(name), "needs tls = true on this upstream");
                    }
                }
            }
            match (&up.client_cert_file, &up.client_key_file) {
                (Some(_), None) => {
                    return err(&field("client_key_file"), "client_cert_file needs its key")
                }
                (None, Some(_)) => {
                    return err(
                        &field("client_cert_file"),
                        "client_key_file needs its certificate",
                    )
                }
                _ => {}
            }
            if up
                .server_name
                .as_deref()
                .is_some_and(|n| rustls::pki_types::ServerName::try_from(n.to_string()).is_err())
            {
                return err(&field("server_name"), "not a valid DNS name or IP address");
            }
        }
        Ok(())
    }
}

fn validate_auth(auth: &AuthConfig) -> Result<(), (String, String)> {
    if auth.users.is_empty() {
        return Err((
            "auth.users".into(),
            "at least one user is needed (or remove [auth])".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, u) in auth.users.iter().enumerate() {
        if u.name.is_empty() || u.name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err((
                format!("auth.users[{i}].name"),
                "must be a non-empty name without spaces".into(),
            ));
        }
        if !names.insert(u.name.as_str()) {
            return Err((
                format!("auth.users[{i}].name"),
                format!("duplicate user {:?}", u.name),
            ));
        }
        if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                format!("auth.users[{i}].sha256"),
                "must be the 64 hex digits of the password's SHA-256 (echo -n \"$PASSWORD\" | sha256sum)".into(),
            ));
        }
    }
    Ok(())
}

fn check_address(field: &str, addr: &str) -> Result<(), (String, String)> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err((field.into(), format!("{addr:?} is not a host:port address"))),
    }
}
