//! Following a create or restore stream: progress events to a [`Progress`],
//! then the final `completed` event, which must be there.

use hop3_proto::v1::{
    BackupSummary, CreateBackupEvent, Progress as ProgressEvent, RestoreBackupEvent, RestoreResult,
    create_backup_event, restore_backup_event,
};
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::error::CliError;
use crate::progress::Progress;

/// What one message of a progress stream says.
pub enum Event<T> {
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
    /// Which event this is.
    fn into_event(self) -> Event<Self::Done>;
}

impl StreamEvent for CreateBackupEvent {
    type Done = BackupSummary;
    fn into_event(self) -> Event<BackupSummary> {
        match self.event {
            Some(create_backup_event::Event::Progress(p)) => Event::Progress(p),
            Some(create_backup_event::Event::Completed(s)) => Event::Completed(s),
            None => Event::Unknown,
        }
    }
}

impl StreamEvent for RestoreBackupEvent {
    type Done = RestoreResult;
    fn into_event(self) -> Event<RestoreResult> {
        match self.event {
            Some(restore_backup_event::Event::Progress(p)) => Event::Progress(p),
            Some(restore_backup_event::Event::Completed(r)) => Event::Completed(r),
            None => Event::Unknown,
        }
    }
}

/// Reads `stream` to its end and returns the result of its `completed`
/// event. The stream is read past that event so that an error status
/// closing the call still wins: the call's status is the final word.
/// `on_error` maps a status from the stream (see [`Controller::error`]).
///
/// [`Controller::error`]: crate::client::Controller::error
pub async fn follow<E, S>(
    mut stream: S,
    progress: &mut dyn Progress,
    on_error: impl Fn(Status) -> CliError,
    operation: &'static str,
) -> Result<E::Done, CliError>
where
    E: StreamEvent,
    S: Stream<Item = Result<E, Status>> + Unpin,
{
    let mut done = None;
    let outcome = loop {
        match stream.next().await {
            Some(Ok(message)) => match message.into_event() {
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
    use crate::error::Subject;
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

    async fn run(
        events: Vec<Result<CreateBackupEvent, Status>>,
    ) -> (Result<BackupSummary, CliError>, Recorder) {
        let mut recorder = Recorder::default();
        let on_error = |s| CliError::from_status(s, Subject::App, "http://c");
        let result = follow(
            tokio_stream::iter(events),
            &mut recorder,
            on_error,
            "backup",
        )
        .await;
        (result, recorder)
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
