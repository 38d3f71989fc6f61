//! A database's own properties: read at dump time (encoding, locale, owner, `ALTER DATABASE ... SET` settings,
//! comment, privileges, `ALTER ROLE ... IN DATABASE ... SET` settings), and given to the database `dump-restore`
//! creates. `pg_dump` without `--create` carries none of them, so a
//! database created with the server's defaults would sort and compare text differently from the source, or refuse
//! its data (an encoding it cannot hold).
//!
//! The statements are built as `pg_dump`/`pg_dumpall` build theirs (src/bin/pg_dump/pg_dump.c `dumpDatabase`,
//! src/bin/pg_dump/dumputils.c `makeAlterConfigCommand`, `buildACLCommands`): identifiers in double quotes (`"` doubled), literals in
//! single quotes (`'` doubled, and `E'...'` with `\` doubled when the value holds a backslash), and the settings
//! whose value is a list (`search_path`, ...) split and each element quoted.

use super::{DatabaseGrant, DatabaseProperties, RoleSettings};
use crate::pg;

/// `"name"` with `"` doubled: an SQL identifier, taken exactly as written (PostgreSQL docs, "Identifiers and Key
/// Words"). Pure.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with `'` doubled; `E'...'` with `\` doubled too when `text` holds a backslash, so that the literal
/// means the same whatever `standard_conforming_strings` is (PostgreSQL docs, "String Constants"). Pure.
pub(super) fn quote_literal(text: &str) -> String {
    if text.contains('\\') {
        format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", text.replace('\'', "''"))
    }
}

/// Settings whose value is a list of possibly double-quoted elements (`GUC_LIST_QUOTE`;
/// src/bin/pg_dump/dumputils.c `variable_is_guc_list_quote`).
const LIST_SETTINGS: [&str; 6] = [
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
];

/// Split a stored list value (`"$user", public`) into its elements, removing the double quotes (`""` inside
/// is one `"`); `None` if it is not a well-formed list (src/fe_utils/string_utils.c `SplitGUCList`). Pure.
fn split_list(value: &str) -> Option<Vec<String>> {
    let chars: Vec<char> = value.chars().collect();
    let (mut out, mut i) = (Vec::new(), 0);
    let skip_space = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_space(&mut i);
        if chars.get(i) == Some(&'"') {
            i += 1;
            let mut element = String::new();
            loop {
                match chars.get(i) {
                    None => return None,
                    Some('"') if chars.get(i + 1) == Some(&'"') => {
                        element.push('"');
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        element.push(*c);
                        i += 1;
                    }
                }
            }
            out.push(element);
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' && !chars[i].is_whitespace() {
                i += 1;
            }
            if i == start {
                return None;
            }
            out.push(chars[start..i].iter().collect());
        }
        skip_space(&mut i);
        match chars.get(i) {
            None => return Some(out),
            Some(',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// `ALTER DATABASE "db" SET "name" TO value` for one stored `name=value` setting; `None` if it is not `name=value`.
/// Pure.
pub(super) fn setting_sql(database: &str, setting: &str) -> Option<String> {
    set_sql(&format!("alter database {}", quote_ident(database)), setting)
}

/// `ALTER ROLE "role" IN DATABASE "db" SET "name" TO value` for one stored setting; `None` as [`setting_sql`].
/// Pure.
pub(super) fn role_setting_sql(role: &str, database: &str, setting: &str) -> Option<String> {
    set_sql(&format!("alter role {} in database {}", quote_ident(role), quote_ident(database)), setting)
}

/// `<scope> SET "name" TO value` for one stored `name=value` setting. Pure.
fn set_sql(scope: &str, setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    if name.is_empty() {
        return None;
    }
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        if value.trim().is_empty() {
            "''".to_owned()
        } else {
            match split_list(value) {
                Some(list) => list.iter().map(|e| quote_literal(e)).collect::<Vec<_>>().join(", "),
                None => quote_literal(value),
            }
        }
    } else {
        quote_literal(value)
    };
    Some(format!("{scope} set {} to {value}", quote_ident(name)))
}

/// `CREATE DATABASE` of `name` from `template0` with `properties` (the source's encoding, LC_COLLATE, LC_CTYPE,
/// and the locale provider with its locale where the target's major has it), for a server of major
/// `server_major`. Returns the statement and, for each property the target cannot take, a note. Pure.
pub(super) fn create_sql(
    name: &str,
    properties: Option<&DatabaseProperties>,
    server_major: u32,
) -> (String, Vec<String>) {
    let mut sql = format!("create database {} template template0", quote_ident(name));
    let mut notes = Vec::new();
    let Some(p) = properties else { return (sql, notes) };
    sql.push_str(&format!(
        " encoding {} lc_collate {} lc_ctype {}",
        quote_literal(&p.encoding),
        quote_literal(&p.collate),
        quote_literal(&p.ctype)
    ));
    let locale = p.locale.as_deref();
    match (p.locale_provider.as_deref(), server_major) {
        (None, _) => {}
        (Some("libc"), 15..) => sql.push_str(" locale_provider = libc"),
        (Some("icu"), 15..) => {
            sql.push_str(" locale_provider = icu");
            if let Some(l) = locale {
                sql.push_str(&format!(" icu_locale {}", quote_literal(l)));
            }
            match (&p.icu_rules, server_major) {
                (Some(r), 16..) => sql.push_str(&format!(" icu_rules {}", quote_literal(r))),
                (Some(_), _) => notes.push(format!("PostgreSQL {server_major} has no ICU rules: left out")),
                (None, _) => {}
            }
        }
        (Some("builtin"), 17..) => {
            sql.push_str(" locale_provider = builtin");
            if let Some(l) = locale {
                sql.push_str(&format!(" builtin_locale {}", quote_literal(l)));
            }
        }
        (Some("libc"), _) => {}
        (Some(other), _) => notes.push(format!(
            "locale provider {other} is not available on PostgreSQL {server_major}: the server's default is used"
        )),
    }
    (sql, notes)
}

/// The properties of database `name` (see [`DatabaseProperties`]) on a server of major `server_major`.
pub(super) fn properties(
    session: &mut pg::Session,
    name: &str,
    server_major: u32,
) -> Result<DatabaseProperties, crate::Error> {
    let (provider, locale, rules) = match server_major {
        ..15 => ("null::text", "null::text", "null::text"),
        15 => ("d.datlocprovider::text", "d.daticulocale::text", "null::text"),
        16 => ("d.datlocprovider::text", "d.daticulocale::text", "d.daticurules::text"),
        _ => ("d.datlocprovider::text", "d.datlocale::text", "d.daticurules::text"),
    };
    let sql = format!(
        "select pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, {provider}, {locale}, \
         {rules}, pg_get_userbyid(d.datdba)::text, \
         coalesce((select s.setconfig from pg_db_role_setting s where s.setdatabase = d.oid and s.setrole = 0), \
         '{{}}'::text[]), shobj_description(d.oid, 'pg_database'), d.datacl is null \
         from pg_database d where d.datname = $1"
    );
    let what = "read the database's properties";
    let row = session.client().query_one(&sql, &[&name]).map_err(|source| pg::Error::Query { what, source })?;
    let text = |i: usize| row.try_get::<_, Option<String>>(i).map_err(|source| pg::Error::Query { what, source });
    let provider = text(3)?.map(|c| match c.as_str() {
        "c" => "libc".to_owned(),
        "i" => "icu".to_owned(),
        "b" => "builtin".to_owned(),
        other => other.to_owned(),
    });
    // A libc database has no provider locale of its own (17+ leaves datlocale null; 15-16 daticulocale too).
    let locale = text(4)?.filter(|_| provider.as_deref() != Some("libc"));
    let default_privileges: bool = row.try_get(9).map_err(|source| pg::Error::Query { what, source })?;
    let privileges = if default_privileges {
        None
    } else {
        let rows = session
            .client()
            .query(
                "select case when a.grantee = 0 then null else pg_get_userbyid(a.grantee)::text end, \
                 a.privilege_type, a.is_grantable from pg_database d, aclexplode(d.datacl) a \
                 where d.datname = $1 order by 1 nulls first, 2",
                &[&name],
            )
            .map_err(|source| pg::Error::Query { what: "read the database's privileges", source })?;
        Some(
            rows.iter()
                .map(|r| DatabaseGrant { grantee: r.get(0), privilege: r.get(1), grantable: r.get(2) })
                .collect(),
        )
    };
    let role_settings = session
        .client()
        .query(
            "select pg_get_userbyid(s.setrole)::text, s.setconfig from pg_db_role_setting s \
             join pg_database d on d.oid = s.setdatabase where d.datname = $1 and s.setrole <> 0 order by 1",
            &[&name],
        )
        .map_err(|source| pg::Error::Query { what: "read the roles' settings in the database", source })?
        .iter()
        .map(|r| RoleSettings { role: r.get(0), settings: r.get(1) })
        .collect();
    Ok(DatabaseProperties {
        encoding: text(0)?.unwrap_or_default(),
        collate: text(1)?.unwrap_or_default(),
        ctype: text(2)?.unwrap_or_default(),
        locale_provider: provider,
        locale,
        icu_rules: text(5)?,
        owner: text(6)?.unwrap_or_default(),
        settings: row.try_get::<_, Vec<String>>(7).map_err(|source| pg::Error::Query { what, source })?,
        comment: text(8)?,
        privileges,
        role_settings,
    })
}

pub(super) fn database_exists(session: &mut pg::Session, name: &str) -> Result<bool, crate::Error> {
    let row = session
        .client()
        .query_opt("select 1 from pg_database where datname = $1", &[&name])
        .map_err(|source| pg::Error::Query { what: "find the target database", source })?;
    Ok(row.is_some())
}

/// Create database `name` from `template0` with `properties` (see [`create_sql`]) and, if its owner's role
/// exists here, that owner. Returns notes of what was left out (logged as warnings too).
pub(super) fn create_database(
    session: &mut pg::Session,
    name: &str,
    properties: Option<&DatabaseProperties>,
) -> Result<Vec<String>, crate::Error> {
    let (sql, mut notes) = create_sql(name, properties, session.major().major);
    session
        .client()
        .batch_execute(&sql)
        .map_err(|source| pg::Error::Query { what: "create the target database", source })?;
    if let Some(owner) = properties.map(|p| p.owner.as_str()) {
        let exists = session
            .client()
            .query_opt("select 1 from pg_roles where rolname = $1", &[&owner])
            .map_err(|source| pg::Error::Query { what: "find the database's owner", source })?
            .is_some();
        let sql = format!("alter database {} owner to {}", quote_ident(name), quote_ident(owner));
        if !exists {
            notes.push(format!("owner {owner:?} is not a role here (restore it with --globals): the database is owned by the user restoring"));
        } else if let Err(e) = session.client().batch_execute(&sql) {
            notes.push(format!("could not make {owner:?} the owner: {}", one_line(&e)));
        }
    }
    for n in &notes {
        tracing::warn!(database = %name, "{n}");
    }
    Ok(notes)
}

/// Apply the database's own settings, comment, privileges and its roles' settings to `name` (after
/// `pg_restore`, so that none of them, such as `default_transaction_read_only` or a revoked CONNECT, changes how
/// the restore runs). What the server refuses, or a role that does not exist here, is a note (and a warning), not
/// a failure: the data is restored by then.
pub(super) fn apply_properties(session: &mut pg::Session, name: &str, properties: &DatabaseProperties) -> Vec<String> {
    // (what, the statement or why there is none)
    let mut statements: Vec<(String, Result<String, String>)> = Vec::new();
    let not_a_setting = || "not name=value".to_owned();
    for setting in &properties.settings {
        statements.push((format!("setting {setting:?}"), setting_sql(name, setting).ok_or_else(not_a_setting)));
    }
    if let Some(comment) = &properties.comment {
        let sql = format!("comment on database {} is {}", quote_ident(name), quote_literal(comment));
        statements.push(("the comment".to_owned(), Ok(sql)));
    }
    if let Some(grants) = &properties.privileges {
        // The owner here may be the user restoring (when the source's owner is not a role here).
        let owner = session
            .client()
            .query_one("select pg_get_userbyid(datdba)::text from pg_database where datname = $1", &[&name])
            .map(|r| r.get::<_, String>(0))
            .map_err(|e| one_line(&e));
        statements.push(("the default privileges' removal".to_owned(), owner.map(|o| revoke_all_sql(name, &o))));
        for g in grants {
            let grantee = g.grantee.as_deref().map_or("PUBLIC".to_owned(), |r| format!("role {r:?}"));
            let sql = grant_sql(name, g).ok_or_else(|| "not a privilege of databases".to_owned());
            statements.push((format!("privilege {} to {grantee}", g.privilege), sql));
        }
    }
    for r in &properties.role_settings {
        for setting in &r.settings {
            let sql = role_setting_sql(&r.role, name, setting).ok_or_else(not_a_setting);
            statements.push((format!("role {:?}'s setting {setting:?}", r.role), sql));
        }
    }
    let mut notes = Vec::new();
    for (what, sql) in statements {
        if let Err(why) = sql.and_then(|sql| session.client().batch_execute(&sql).map_err(|e| one_line(&e))) {
            let note = format!("{what} not applied: {why}");
            tracing::warn!(database = %name, "{note}");
            notes.push(note);
        }
    }
    notes
}

/// `REVOKE ALL` on database `name` from PUBLIC and from its owner `owner`: what the `GRANT`s of the recorded
/// privileges start from, as pg_dump's `buildACLCommands` does. Pure.
fn revoke_all_sql(name: &str, owner: &str) -> String {
    let db = quote_ident(name);
    format!("revoke all on database {db} from public; revoke all on database {db} from {}", quote_ident(owner))
}

/// `GRANT <privilege> ON DATABASE "name" TO "role"|PUBLIC [WITH GRANT OPTION]`; `None` for a privilege that
/// databases do not have (only `CREATE`, `TEMPORARY` and `CONNECT`: PostgreSQL docs, "Privileges"). Pure.
pub(super) fn grant_sql(name: &str, g: &DatabaseGrant) -> Option<String> {
    let privilege = ["CREATE", "TEMPORARY", "CONNECT"].into_iter().find(|p| *p == g.privilege)?;
    let grantee = g.grantee.as_deref().map_or("public".to_owned(), quote_ident);
    let option = if g.grantable { " with grant option" } else { "" };
    Some(format!("grant {privilege} on database {} to {grantee}{option}", quote_ident(name)))
}

pub(super) fn drop_database(session: &mut pg::Session, name: &str) -> Result<(), crate::Error> {
    let sql = format!("drop database if exists {}", quote_ident(name));
    session
        .client()
        .batch_execute(&sql)
        .map_err(|source| pg::Error::Query { what: "drop the target database", source })?;
    Ok(())
}

/// A server error on one line: its message (the database error's, not the driver's wrapper).
fn one_line(e: &postgres::Error) -> String {
    let text = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned());
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latin1() -> DatabaseProperties {
        DatabaseProperties {
            encoding: "LATIN1".into(),
            collate: "C".into(),
            ctype: "C".into(),
            locale_provider: Some("libc".into()),
            locale: None,
            icu_rules: None,
            owner: "app".into(),
            settings: vec![],
            comment: None,
            privileges: None,
            role_settings: vec![],
        }
    }

    #[test]
    fn issue_12_create_database_takes_the_source_properties() {
        let (sql, notes) = create_sql("my \"db\"", Some(&latin1()), 15);
        assert_eq!(
            sql,
            "create database \"my \"\"db\"\"\" template template0 encoding 'LATIN1' lc_collate 'C' lc_ctype 'C' \
             locale_provider = libc"
        );
        assert!(notes.is_empty());
        // Before 15 there is no provider clause; an older manifest (no properties) gets the server's defaults.
        assert!(!create_sql("d", Some(&latin1()), 14).0.contains("locale_provider"));
        assert_eq!(create_sql("d", None, 15).0, "create database \"d\" template template0");
        let icu = DatabaseProperties {
            encoding: "UTF8".into(),
            collate: "en_US.UTF-8".into(),
            ctype: "en_US.UTF-8".into(),
            locale_provider: Some("icu".into()),
            locale: Some("de-u-co-phonebk".into()),
            icu_rules: Some("&a < g".into()),
            ..latin1()
        };
        let (sql, notes) = create_sql("d", Some(&icu), 16);
        assert!(sql.ends_with(" locale_provider = icu icu_locale 'de-u-co-phonebk' icu_rules '&a < g'"), "{sql}");
        assert!(notes.is_empty());
        let (sql, notes) = create_sql("d", Some(&icu), 15);
        assert!(!sql.contains("icu_rules") && notes.len() == 1, "{sql} {notes:?}");
        let builtin =
            DatabaseProperties { locale_provider: Some("builtin".into()), locale: Some("C.UTF-8".into()), ..icu };
        assert!(create_sql("d", Some(&builtin), 17).0.ends_with(" locale_provider = builtin builtin_locale 'C.UTF-8'"));
        let (sql, notes) = create_sql("d", Some(&builtin), 16);
        assert!(!sql.contains("builtin") && notes[0].contains("not available on PostgreSQL 16"), "{sql}");
    }

    #[test]
    fn issue_12_grants_are_quoted_as_postgresql_parses_them() {
        let g = DatabaseGrant { grantee: Some("Ünï \"q\"".into()), privilege: "CONNECT".into(), grantable: true };
        assert_eq!(
            grant_sql("d b", &g).as_deref(),
            Some("grant CONNECT on database \"d b\" to \"Ünï \"\"q\"\"\" with grant option")
        );
        let public = DatabaseGrant { grantee: None, privilege: "TEMPORARY".into(), grantable: false };
        assert_eq!(grant_sql("d", &public).as_deref(), Some("grant TEMPORARY on database \"d\" to public"));
        let hostile = DatabaseGrant { grantee: None, privilege: "CONNECT; drop table x".into(), grantable: false };
        assert_eq!(grant_sql("d", &hostile), None);
        assert_eq!(
            revoke_all_sql("it's", "O\"k"),
            "revoke all on database \"it's\" from public; revoke all on database \"it's\" from \"O\"\"k\""
        );
    }

    #[test]
    fn issue_12_settings_are_quoted_as_postgresql_parses_them() {
        assert_eq!(setting_sql("d", "work_mem=7MB").as_deref(), Some("alter database \"d\" set \"work_mem\" to '7MB'"));
        assert_eq!(
            setting_sql("d", "search_path=\"$user\", public, \"Odd \"\"S\"\"\"").as_deref(),
            Some("alter database \"d\" set \"search_path\" to '$user', 'public', 'Odd \"S\"'")
        );
        assert_eq!(
            setting_sql("d", "myapp.note=it's a\\b").as_deref(),
            Some("alter database \"d\" set \"myapp.note\" to E'it''s a\\\\b'")
        );
        assert_eq!(setting_sql("d", "search_path=").as_deref(), Some("alter database \"d\" set \"search_path\" to ''"));
        assert_eq!(setting_sql("d", "nothing"), None);
        assert_eq!(
            role_setting_sql("app \"x\"", "d", "work_mem=1MB").as_deref(),
            Some("alter role \"app \"\"x\"\"\" in database \"d\" set \"work_mem\" to '1MB'")
        );
        assert_eq!(split_list("a, \"b c\" ,d"), Some(vec!["a".into(), "b c".into(), "d".into()]));
        assert_eq!(split_list("\"open"), None);
        assert_eq!(split_list("a,,b"), None);
    }
}
