//! Restores that must lose nothing, whatever the names, the other apps on
//! the host, the rights of the app's role, or a crash halfway.

use super::*;

// ---------------------------------------------------------------------------
// Clone names

/// A clone's database is its own even when the source's name fills all
/// 63 bytes PostgreSQL allows (cut, `<db>_<clone>` gave back the source's
/// own name), when clone names differ only in punctuation (they folded into
/// one name), and when a database of the name a clone would get already
/// exists (an app deleted without its database).
#[test]
fn clone_databases_never_reuse_a_database() -> Result<()> {
    let long = format!("shop_{}", "x".repeat(58));
    ensure!(long.len() == 63);
    let pg = PgDb::start(&long)?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 120, &sys.scratch("fixtures")?)?;
    attach(&app, &[("postgres", "db", &pg.url)])?;
    let backed_up = pg.fingerprint()?;
    let id = sys.create("shop")?.backup_id;
    // The source moves on: no clone may take it back to the backup.
    pg.script(PG_CHANGES)?;
    let source_now = pg.fingerprint()?;

    let mut clone_dbs = Vec::new();
    for target in ["my-app", "my.app", "my_app"] {
        sys.restore(&id, Some(target))?;
        let clone = App::existing(&sys.root, target);
        let db = url_database(&service_url(&clone, "db")?)?;
        ensure!(
            db != long,
            "the clone {target} was given the source's database"
        );
        ensure!(
            is_clone_name(&db, &long[..54]),
            "the clone {target} got the database name {db:?}"
        );
        ensure!(
            !clone_dbs.contains(&db),
            "the clone {target} got {db}, which another clone has: {clone_dbs:?}"
        );
        same(
            &backed_up,
            &pg.server.fingerprint(&db)?,
            &format!("the database of the clone {target}"),
        )?;
        clone_dbs.push(db);
    }
    same(
        &source_now,
        &pg.fingerprint()?,
        "the source's database after three clones",
    )?;
    // Each clone writes to its own.
    pg.query_in(&clone_dbs[0], "DELETE FROM orders")?;
    for db in &clone_dbs[1..] {
        same(&backed_up, &pg.server.fingerprint(db)?, db)?;
    }

    // my-app is deleted, its database kept (with what it wrote since). A
    // new clone of that name gets a database of its own.
    let kept = pg.server.fingerprint(&clone_dbs[0])?;
    fs::remove_dir_all(sys.root.join("apps").join("my-app"))?;
    sys.restore(&id, Some("my-app"))?;
    let again = url_database(&service_url(&App::existing(&sys.root, "my-app"), "db")?)?;
    ensure!(
        !clone_dbs.contains(&again) && again != long,
        "the new my-app reuses {again}"
    );
    same(
        &backed_up,
        &pg.server.fingerprint(&again)?,
        "the new my-app",
    )?;
    same(
        &kept,
        &pg.server.fingerprint(&clone_dbs[0])?,
        "the database the deleted my-app left",
    )?;
    same(&source_now, &pg.fingerprint()?, "the source's database")?;
    Ok(())
}

/// MySQL names count characters, so a cut by bytes could fall inside one
/// (it panicked the agent's task): a source database named in long
/// unicode gets a clone with a valid name of its own.
#[test]
fn a_mariadb_clone_of_a_long_unicode_database_name_gets_its_own() -> Result<()> {
    let db = format!("boutique_données_{}", "é".repeat(40));
    let my = MyDb::start(&db)?;
    let sys = System::start()?;
    let app = App::build(&sys.root, "shop", 121, &sys.scratch("fixtures")?)?;
    attach(&app, &[("mysql", "db", &my.url)])?;
    let data = my.fingerprint()?;
    let id = sys.create("shop")?.backup_id;

    sys.restore(&id, Some("shop-clone"))?;
    let clone = App::existing(&sys.root, "shop-clone");
    let clone_db = url_database(&service_url(&clone, "db")?)?;
    ensure!(clone_db != db, "the clone was given the source's database");
    ensure!(
        clone_db.len() <= 63 && clone_db.is_ascii(),
        "the clone's database is named {clone_db:?}"
    );
    let cloned: Vec<String> = my
        .server
        .fingerprint(&clone_db)?
        .iter()
        .map(|l| l.replace(&format!("`{clone_db}`."), &format!("`{db}`.")))
        .collect();
    same(&data, &cloned, "the clone's database")?;
    same(&data, &my.fingerprint()?, "the source's database")?;
    Ok(())
}
