//! Following a create or restore stream: the `started` event, progress
//! events to a [`Progress`], then the final `completed` event, which must be
//! there; or Ctrl-C, which ends the following, not the job.

use std::future::Future;

use hop3_proto::v1::{
    BackupSummary, CreateBackupEvent, Progress as ProgressEvent, RestoreBackupEvent, RestoreResult,
    RestoreStarted, create_backup_event, restore_backup_event,
};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::error::CliError;
use crate::progress::Progress;

/// What one message of a progress stream says.
pub enum Event<T, S> {
    /// The job exists on the controller: what to name it by.
    Started(S),
    /// How far the operation is.
    Progress(ProgressEvent),
    /// The operation is done; this is its result.
    Completed(T),
    /// An event this CLI does not know (from a newer controller): skipped.
    Unknown,
}

/// A message of a stream of progress events closed by a result.
pub trait StreamEvent {
    /// The result carried by the final event.
    type Done;
    /// What the first event says about the job.
    type Started;
    /// Which event this is.
    fn into_event(self) -> Event<Self::Done, Self::Started>;
}

impl StreamEvent for CreateBackupEvent {
    type Done = BackupSummary;
    type Started = BackupSummary;
    fn into_event(self) -> Event<BackupSummary, BackupSummary> {
        match self.event {
            Some(create_backup_event::Event::Started(s)) => Event::Started(s),
            Some(create_backup_event::Event::Progress(p)) => Event::Progress(p),
            Some(create_backup_event::Event::Completed(s)) => Event::Completed(s),
            None => Event::Unknown,
        }
    }
}

impl StreamEvent for RestoreBackupEvent {
    type Done = RestoreResult;
    type Started = RestoreStarted;
    fn into_event(self) -> Event<RestoreResult, RestoreStarted> {
        match self.event {
            Some(restore_backup_event::Event::Started(s)) => Event::Started(s),
            Some(restore_backup_event::Event::Progress(p)) => Event::Progress(p),
            Some(restore_backup_event::Event::Completed(r)) => Event::Completed(r),
            None => Event::Unknown,
        }
    }
}

/// Resolves on the first Ctrl-C (never, if the handler cannot be set).
pub async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// How to follow one stream: what its errors and an interrupt become.
pub struct Following<'a, F, I> {
    pub progress: &'a mut dyn Progress,
    /// Maps a status from the stream (see [`ControllerClient::error`]).
    ///
    /// [`ControllerClient::error`]: crate::client::ControllerClient::error
    pub on_error: F,
    /// Resolves when the user interrupts (see [`ctrl_c`]).
    pub interrupt: I,
    /// "backup" or "restore", for a stream that ends without a result.
    pub operation: &'static str,
}

/// Reads `stream` to its end and returns the result of its `completed`
/// event. The stream is read past that event so that an error status
/// closing the call still wins: the call's status is the final word. An
/// interrupt before the result ends the following with `on_interrupt` of
/// what the `started` event said (None if it had not come).
pub async fn follow<E, S, F, I>(
    mut stream: S,
    how: Following<'_, F, I>,
    on_interrupt: impl FnOnce(Option<E::Started>) -> CliError,
) -> Result<E::Done, CliError>
where
    E: StreamEvent,
    S: Stream<Item = Result<E, Status>> + Unpin,
    F: Fn(Status) -> CliError,
    I: Future<Output = ()>,
{
    let Following {
        progress,
        on_error,
        interrupt,
        operation,
    } = how;
    tokio::pin!(interrupt);
    let mut started = None;
    let mut done = None;
    let outcome = loop {
        let next = tokio::select! {
            // The interrupt first: a busy stream must not hide a Ctrl-C.
            biased;
            () = &mut interrupt, if done.is_none() => {
                progress.finish(false);
                return Err(on_interrupt(started));
            }
            next = stream.next() => next,
        };
        match next {
            Some(Ok(message)) => match message.into_event() {
                Event::Started(s) => started = Some(s),
                Event::Progress(p) if done.is_none() => {
                    progress.update(&p.step, p.bytes_done, p.bytes_total);
                }
                Event::Completed(result) => done = Some(result),
                Event::Progress(_) | Event::Unknown => {}
            },
            Some(Err(status)) => break Err(on_error(status)),
            None => break Ok(()),
        }
    };
    progress.finish(outcome.is_ok() && done.is_some());
    outcome?;
    done.ok_or(CliError::Incomplete { operation })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{InterruptedJob, Subject};
    use create_backup_event::Event as E;

    #[derive(Default)]
    struct Recorder(Vec<(String, u64, u64)>, bool);

    impl Progress for Recorder {
        fn update(&mut self, step: &str, done: u64, total: u64) {
            self.0.push((step.to_owned(), done, total));
        }
        fn finish(&mut self, _completed: bool) {
            self.1 = true;
        }
    }

    fn progress(step: &str, done: u64) -> Result<CreateBackupEvent, Status> {
        Ok(CreateBackupEvent {
            event: Some(E::Progress(ProgressEvent {
                step: step.into(),
                bytes_done: done,
                bytes_total: 10,
            })),
        })
    }

    fn completed() -> Result<CreateBackupEvent, Status> {
        Ok(CreateBackupEvent {
            event: Some(E::Completed(BackupSummary {
                backup_id: "20251108_143022_a8f3d9".into(),
                ..Default::default()
            })),
        })
    }

    fn interrupted(started: Option<BackupSummary>) -> CliError {
        CliError::Interrupted(InterruptedJob::Backup {
            id: started.map(|s| s.backup_id),
            app: "my-app".into(),
            cancelled: false,
        })
    }

    async fn follow_with(
        events: impl Stream<Item = Result<CreateBackupEvent, Status>> + Unpin,
        interrupt: impl Future<Output = ()>,
    ) -> (Result<BackupSummary, CliError>, Recorder) {
        let mut recorder = Recorder::default();
        let how = Following {
            progress: &mut recorder,
            on_error: |s| CliError::from_status(s, Subject::App, "http://c"),
            interrupt,
            operation: "backup",
        };
        let result = follow(events, how, interrupted).await;
        (result, recorder)
    }

    async fn run(
        events: Vec<Result<CreateBackupEvent, Status>>,
    ) -> (Result<BackupSummary, CliError>, Recorder) {
        follow_with(tokio_stream::iter(events), std::future::pending()).await
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_names_the_started_backup() {
        let started = Ok(CreateBackupEvent {
            event: Some(E::Started(BackupSummary {
                backup_id: "20251108_143022_a8f3d9".into(),
                ..Default::default()
            })),
        });
        // The stream stays open, as a backup still running does; the
        // interrupt comes once its events are read (paused time moves on
        // only when nothing else can run).
        let events =
            tokio_stream::iter(vec![started, progress("data", 5)]).chain(tokio_stream::pending());
        let ctrl_c = tokio::time::sleep(std::time::Duration::from_secs(1));
        let (result, rec) = follow_with(events, ctrl_c).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 130);
        let text = err.to_string();
        assert!(
            text.contains("backup 20251108_143022_a8f3d9 of my-app goes on")
                && text.contains("hop3 backup:info 20251108_143022_a8f3d9"),
            "{text}"
        );
        assert_eq!(rec.0, [("data".into(), 5, 10)]);
        assert!(rec.1, "progress finished");
        // Before the started event there is no ID to give.
        let (result, _) = follow_with(tokio_stream::pending(), std::future::ready(())).await;
        assert!(
            result
                .unwrap_err()
                .to_string()
                .contains("hop3 backup:list my-app")
        );
    }

    #[tokio::test]
    async fn returns_the_completed_event_after_progress() {
        let unknown = Ok(CreateBackupEvent { event: None });
        let (result, rec) = run(vec![
            progress("source", 5),
            unknown,
            progress("data", 10),
            completed(),
        ])
        .await;
        assert_eq!(result.unwrap().backup_id, "20251108_143022_a8f3d9");
        assert_eq!(rec.0, [("source".into(), 5, 10), ("data".into(), 10, 10)]);
        assert!(rec.1, "progress finished");
    }

    #[tokio::test]
    async fn a_stream_without_completed_is_an_error() {
        let (result, rec) = run(vec![progress("source", 5)]).await;
        assert!(matches!(
            result,
            Err(CliError::Incomplete {
                operation: "backup"
            })
        ));
        assert!(rec.1, "progress finished");
        let (result, _) = run(vec![]).await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn an_error_status_wins_even_after_completed() {
        let failed = Err(Status::resource_exhausted(
            "Insufficient disk space: 1 GB needed",
        ));
        let (result, _) = run(vec![progress("data", 1), failed]).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 5);
        assert_eq!(err.to_string(), "Insufficient disk space: 1 GB needed");
        let late = Err(Status::internal("lost"));
        let (result, _) = run(vec![completed(), late]).await;
        assert!(result.is_err());
    }
}
