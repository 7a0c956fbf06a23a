//! `agent:list`: the agents the controller knows, online or not;
//! `agent:forget HOST`: drop an offline one.

use hop3_proto::v1::AgentInfo;

use crate::client::ControllerClient;
use crate::error::CliError;
use crate::output::{Output, format_time, render_table};
use crate::views::{AgentView, ForgottenView, agent_status};

/// Lists the agents in the order the controller returns them.
pub async fn run(controller: &mut ControllerClient, out: Output) -> Result<(), CliError> {
    let agents = controller.list_agents().await?;
    if out.is_json() {
        let views: Vec<AgentView> = agents.into_iter().map(AgentView::from).collect();
        out.json(&views)
    } else {
        out.text(&render(&agents))
    }
}

/// Forgets the offline agent of `host`.
pub async fn forget(
    controller: &mut ControllerClient,
    out: Output,
    host: &str,
) -> Result<(), CliError> {
    controller.forget_agent(host).await?;
    if out.is_json() {
        out.json(&ForgottenView {
            forgotten: host.to_owned(),
        })
    } else {
        out.text(&render_forgotten(host))
    }
}

/// What `agent:forget` prints once the controller forgot the host.
pub fn render_forgotten(host: &str) -> String {
    format!(
        "✓ Agent {host} forgotten: it is no longer listed (it registers again if its agent calls in)\n"
    )
}

/// A plain table like `backup:list`'s, or `No agents registered.`
pub fn render(agents: &[AgentInfo]) -> String {
    if agents.is_empty() {
        return "No agents registered.\n".to_owned();
    }
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            vec![
                a.host.clone(),
                a.address.clone(),
                agent_status(a).to_owned(),
                format_time(&a.last_seen),
                app_names(&a.apps),
            ]
        })
        .collect();
    let mut text = render_table(&["HOST", "ADDRESS", "STATUS", "LAST SEEN", "APPS"], &rows);
    for (app, hosts) in shared_apps(agents) {
        text.push_str(&format!(
            "! App {app} is on {}: name the host with --host for backup:create\n",
            hosts.join(", ")
        ));
    }
    text
}

/// The app names more than one online host claims, with those hosts: an
/// app found by name alone is ambiguous then.
fn shared_apps(agents: &[AgentInfo]) -> Vec<(&str, Vec<&str>)> {
    let mut hosts_of: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for a in agents.iter().filter(|a| a.online) {
        for app in &a.apps {
            hosts_of.entry(app).or_default().push(&a.host);
        }
    }
    hosts_of.into_iter().filter(|(_, h)| h.len() > 1).collect()
}

/// The apps an agent serves, comma-joined, or `-`.
fn app_names(apps: &[String]) -> String {
    if apps.is_empty() {
        "-".to_owned()
    } else {
        apps.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(host: &str, online: bool, last_seen: &str, apps: &[&str]) -> AgentInfo {
        AgentInfo {
            host: host.into(),
            address: format!("http://{host}:7411"),
            version: "0.1.0".into(),
            online,
            last_seen: last_seen.into(),
            apps: apps.iter().map(|s| (*s).to_owned()).collect(),
            degraded: false,
        }
    }

    #[test]
    fn renders_an_aligned_table() {
        let agents = [
            agent("web-1", true, "2025-11-08T14:30:22Z", &["blog", "shop"]),
            agent(
                "db-server-2",
                false,
                "2025-11-07T10:30:15.123456+01:00",
                &[],
            ),
        ];
        assert_eq!(
            render(&agents),
            "\
HOST         ADDRESS                  STATUS   LAST SEEN            APPS
web-1        http://web-1:7411        online   2025-11-08 14:30:22  blog, shop
db-server-2  http://db-server-2:7411  offline  2025-11-07 09:30:15  -
"
        );
    }

    #[test]
    fn a_missing_last_seen_shows_a_dash() {
        let text = render(&[agent("h", false, "", &["a"])]);
        assert_eq!(
            text.lines().nth(1),
            Some("h     http://h:7411  offline  -          a")
        );
    }

    #[test]
    fn an_app_on_two_online_hosts_is_pointed_out() {
        let agents = [
            agent("web-1", true, "", &["blog", "shop"]),
            agent("web-2", true, "", &["shop"]),
            agent("old", false, "", &["blog"]),
        ];
        let text = render(&agents);
        let notes: Vec<&str> = text.lines().filter(|l| l.starts_with('!')).collect();
        assert_eq!(
            notes,
            ["! App shop is on web-1, web-2: name the host with --host for backup:create"]
        );
    }

    #[test]
    fn no_agents_says_so() {
        assert_eq!(render(&[]), "No agents registered.\n");
    }
}
