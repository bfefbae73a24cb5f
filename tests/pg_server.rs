//! The throwaway PostgreSQL server of tests/common/pg.rs: fresh databases are separate and
//! usable, and `database_or_skip` hands out URLs wherever PostgreSQL is installed.

mod common;

use common::pg::{database_or_skip, PgServer, SUPERUSER};

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"))
}

#[test]
fn fresh_databases_are_distinct_and_usable() {
    let test = "fresh_databases_are_distinct_and_usable";
    let (Some(first), Some(second)) = (database_or_skip(test), database_or_skip(test)) else {
        return;
    };
    assert_ne!(first, second);

    let mut a = connect(&first);
    a.batch_execute("CREATE TABLE note (id integer PRIMARY KEY, body text NOT NULL)")
        .unwrap();
    a.execute(
        "INSERT INTO note (id, body) VALUES ($1, $2)",
        &[&1i32, &"first"],
    )
    .unwrap();
    let body: String = a
        .query_one("SELECT body FROM note WHERE id = $1", &[&1i32])
        .unwrap()
        .get(0);
    assert_eq!(body, "first");

    // The first database's table must not show in the second: they are separate databases,
    // not one database under two names.
    let mut b = connect(&second);
    let seen: bool = b
        .query_one("SELECT to_regclass('note') IS NOT NULL", &[])
        .unwrap()
        .get(0);
    assert!(!seen, "{second} sees a table created in {first}");
    b.batch_execute("CREATE TABLE note (id integer PRIMARY KEY, body text NOT NULL)")
        .unwrap();
    b.execute(
        "INSERT INTO note (id, body) VALUES ($1, $2), ($3, $4)",
        &[&1i32, &"second", &2i32, &"third"],
    )
    .unwrap();
    let count: i64 = b
        .query_one("SELECT count(*) FROM note", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 2);
    let count: i64 = a
        .query_one("SELECT count(*) FROM note", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);

    let names: Vec<String> = [&mut a, &mut b]
        .into_iter()
        .map(|client| {
            client
                .query_one("SELECT current_database()", &[])
                .unwrap()
                .get(0)
        })
        .collect();
    assert_ne!(names[0], names[1]);
}

#[test]
fn database_or_skip_gives_a_url_where_postgres_is_installed() {
    let test = "database_or_skip_gives_a_url_where_postgres_is_installed";
    match PgServer::shared() {
        Ok(server) => {
            let url = database_or_skip(test).expect("PostgreSQL is installed: a database URL");
            let prefix = format!(
                "postgres://{SUPERUSER}@127.0.0.1:{}/gaze_test_",
                server.port()
            );
            assert!(
                url.starts_with(&prefix),
                "{url} does not start with {prefix}"
            );
            assert!(server.bin_dir().join("postgres").is_file());

            let mut client = connect(&url);
            let row = client
                .query_one("SELECT current_database(), current_user", &[])
                .unwrap();
            let (database, user): (String, String) = (row.get(0), row.get(1));
            assert!(
                url.ends_with(&format!("/{database}")),
                "{url} vs {database}"
            );
            assert_eq!(user, SUPERUSER);
        }
        // Without PostgreSQL the helper skips; with GAZE_REQUIRE_POSTGRES=1 it panics here,
        // which fails this test as it should.
        Err(reason) => {
            assert!(
                database_or_skip(test).is_none(),
                "no server ({reason}) yet a URL"
            );
        }
    }
}
