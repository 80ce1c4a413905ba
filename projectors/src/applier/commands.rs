//! The repeated-command part of the log-order rule, for projections. Writers and the saga keep a
//! [`platform::log_order::LogOrder`] in memory; a projection keeps chain heads in its rows and
//! the commands behind them in `projection_commands`, so that it judges every event with the
//! same rule ([`platform::log_order::extends_chain`]): a command id that already extended one
//! aggregate cannot create another (a keyed retry that drew a new order id would otherwise show
//! a PENDING order no saga ever runs). Uses are remembered for the command window, measured on
//! the partition's clock (kept with the offsets); older ones are deleted, as writers forget them.

use std::collections::HashMap;

use domain::Version;
use platform::log_order::CommandUse;
use sqlx::{PgConnection, Row};

/// What the log showed of each (partition, command id), as this batch sees it. Per partition,
/// as the rule is: a writer knows the commands of its own partition only.
pub(super) type CommandUses = HashMap<(i32, String), CommandUse>;

/// The recorded uses of `command_ids` (partition, command id) in a generation.
pub(super) async fn load(
    connection: &mut PgConnection,
    projection: &str,
    command_ids: &[(i32, String)],
) -> Result<CommandUses, sqlx::Error> {
    if command_ids.is_empty() {
        return Ok(CommandUses::new());
    }
    let (partitions, ids): (Vec<i32>, Vec<&str>) =
        command_ids.iter().map(|(p, id)| (*p, id.as_str())).unzip();
    let rows = sqlx::query(
        "SELECT c.partition, c.command_id, c.aggregate_id, c.last_version, c.used_at_ms \
         FROM projection_commands c JOIN UNNEST($2::int4[], $3::text[]) AS w(p, id) \
         ON c.partition = w.p AND c.command_id = w.id WHERE c.projection = $1",
    )
    .bind(projection)
    .bind(partitions)
    .bind(ids)
    .fetch_all(connection)
    .await?;
    rows.iter()
        .map(|row| {
            let version: i64 = row.try_get("last_version")?;
            Ok((
                (
                    row.try_get::<i32, _>("partition")?,
                    row.try_get::<String, _>("command_id")?,
                ),
                CommandUse {
                    aggregate_id: row.try_get("aggregate_id")?,
                    last_version: Version::new(u64::try_from(version).unwrap_or(0)),
                    used_at: row.try_get("used_at_ms")?,
                },
            ))
        })
        .collect()
}

/// Records the uses a batch added or moved, in the batch's transaction.
pub(super) async fn store(
    connection: &mut PgConnection,
    projection: &str,
    uses: &CommandUses,
) -> Result<(), sqlx::Error> {
    if uses.is_empty() {
        return Ok(());
    }
    let (mut partitions, mut ids, mut aggregates, mut versions, mut used_at) =
        (vec![], vec![], vec![], vec![], vec![]);
    for ((partition, command_id), used) in uses {
        partitions.push(*partition);
        ids.push(command_id.as_str());
        aggregates.push(used.aggregate_id.as_str());
        versions.push(i64::try_from(used.last_version.get()).unwrap_or(i64::MAX));
        used_at.push(used.used_at);
    }
    // A use after the old one expired replaces it whole (aggregate and time too).
    sqlx::query(
        "INSERT INTO projection_commands (projection, partition, command_id, aggregate_id, last_version, used_at_ms) \
         SELECT $1, p, c, a, v, t FROM UNNEST($2::int4[], $3::text[], $4::text[], $5::int8[], $6::int8[]) AS u(p, c, a, v, t) \
         ON CONFLICT (projection, partition, command_id) DO UPDATE \
         SET aggregate_id = EXCLUDED.aggregate_id, last_version = EXCLUDED.last_version, used_at_ms = EXCLUDED.used_at_ms",
    )
    .bind(projection)
    .bind(partitions)
    .bind(ids)
    .bind(aggregates)
    .bind(versions)
    .bind(used_at)
    .execute(connection)
    .await?;
    Ok(())
}

/// Deletes the uses the window no longer remembers at each partition's clock (`oldest`: the
/// oldest use time still remembered, per partition): they can never count again. One statement
/// per partition, so each is a range scan of the `used_at_ms` index over the expired uses only
/// (a join with the partitions' list was planned as a scan of every row, once per batch).
pub(super) async fn forget_expired(
    connection: &mut PgConnection,
    projection: &str,
    oldest: &[(i32, i64)],
) -> Result<(), sqlx::Error> {
    for (partition, oldest) in oldest {
        sqlx::query(
            "DELETE FROM projection_commands \
             WHERE projection = $1 AND partition = $2 AND used_at_ms < $3",
        )
        .bind(projection)
        .bind(partition)
        .bind(oldest)
        .execute(&mut *connection)
        .await?;
    }
    Ok(())
}
