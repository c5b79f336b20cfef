// smtplab live view: sessions, their state on the diagram, their lines, mailboxes and queue,
// kept up to date by the server's event stream (/events). Every text from the server goes
// into the page with textContent, never as markup: an EHLO name or a NOOP argument such as
// <script> is shown as the characters it is.
"use strict";

const LINES_KEPT = 200;
const sessions = new Map();
let chosen = location.hash.slice(1) || null;
let openUser = null;

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function keepLine(session, event) {
  session.lines.push(event);
  if (session.lines.length > LINES_KEPT) session.lines.shift();
}

function apply(event) {
  const session = sessions.get(event.id);
  switch (event.kind) {
    case "snapshot":
      sessions.clear();
      for (const s of event.sessions) sessions.set(s.id, s);
      break;
    case "open":
      sessions.set(event.id, {
        id: event.id, peer: event.peer, role: event.role, machine: event.machine,
        state: event.state, closed: false, last: null, lines: [],
      });
      break;
    case "line":
      if (session) keepLine(session, event);
      break;
    case "move":
      if (session) {
        session.state = event.to;
        session.last = event;
        keepLine(session, event);
      }
      break;
    case "close":
      if (session) session.closed = true;
      break;
    case "store":
      showStore(event);
      return;
    default:
      return;
  }
  show();
}

// The session to follow: the one chosen (a click, or #S3 in the address), else the newest
// open one, else the newest.
function followed() {
  if (chosen && sessions.has(chosen)) return sessions.get(chosen);
  const all = [...sessions.values()];
  const open = all.filter((s) => !s.closed);
  return (open.length ? open : all).at(-1) || null;
}

function show() {
  const current = followed();
  showSessions(current);
  showDiagram(current);
  showLines(current);
}

function showSessions(current) {
  const list = document.getElementById("sessions");
  const items = [...sessions.values()].reverse().map((s) => {
    const item = element("li", null, s.closed ? "closed" : "open");
    if (current && s.id === current.id) item.classList.add("selected");
    item.dataset.session = s.id;
    item.dataset.state = s.state;
    item.append(element("span", s.id, "id"), element("span", `${s.role} · ${s.closed ? "closed" : s.state}`, "state"));
    item.append(element("span", s.peer, "peer"));
    item.addEventListener("click", () => {
      chosen = s.id;
      history.replaceState(null, "", `#${s.id}`);
      show();
    });
    return item;
  });
  list.replaceChildren(...items);
}

function showDiagram(current) {
  const machine = current ? current.machine : "smtp";
  for (const name of ["smtp", "pop3"]) {
    document.getElementById(`${name}-machine`).classList.toggle("hidden", name !== machine);
  }
  const title = current ? `State machine: ${current.id} (${current.role}) is in ${current.state}` : "State machine";
  document.getElementById("diagram-title").textContent = title;
  const svg = document.getElementById(`${machine}-diagram`);
  for (const state of svg.querySelectorAll(".state")) {
    state.classList.toggle("current", !!current && state.dataset.state === current.state);
  }
  const last = current && current.last;
  for (const move of svg.querySelectorAll(".move")) {
    const from = move.dataset.from;
    move.classList.toggle("illegal", !!current && from !== current.state);
    move.classList.toggle("last", !!last && from === last.from && move.dataset.to === last.to);
  }
}

function showLines(current) {
  const list = document.getElementById("lines");
  document.getElementById("lines-title").textContent = current ? `Lines of ${current.id}` : "Lines";
  if (!current) {
    list.replaceChildren();
    return;
  }
  const items = current.lines.map((line) => {
    if (line.kind === "move") {
      const moved = line.from === line.to ? `${line.from} (unchanged)` : `${line.from} → ${line.to}`;
      const item = element("li", null, "move");
      item.append(element("span", "", "dir"), element("span", moved, "text"), element("span", line.rfc, "rfc"));
      return item;
    }
    const item = element("li", null, line.dir === "--" ? "event" : line.dir);
    if (line.dir === "S" && /^[45]/.test(line.text)) item.classList.add("refused");
    item.append(element("span", line.dir === "--" ? "--" : `${line.dir}:`, "dir"), element("span", line.text, "text"));
    return item;
  });
  list.replaceChildren(...items);
  list.scrollTop = list.scrollHeight;
}

function showStore(store) {
  const rows = store.mailboxes.map((box) => {
    const row = element("tr");
    row.dataset.user = box.user;
    row.dataset.count = box.count;
    row.append(element("td", box.user), element("td", box.count), element("td", box.size));
    row.addEventListener("click", () => {
      openUser = box;
      showMessages();
    });
    if (openUser && openUser.user === box.user) openUser = box;
    return row;
  });
  document.querySelector("#mailboxes tbody").replaceChildren(...rows);
  showMessages();
  const queued = store.queue.map((entry) => {
    const row = element("tr");
    const recipients = element("td");
    for (const rcpt of entry.recipients) {
      recipients.append(element("div", `${rcpt.path} ${rcpt.state} ${rcpt.reply}`));
    }
    row.append(element("td", entry.id), element("td", entry.sender), recipients,
      element("td", entry.next), element("td", entry.attempts));
    return row;
  });
  document.querySelector("#queue tbody").replaceChildren(...queued);
}

// Links to each message of the mailbox clicked last; the server shows them raw.
function showMessages() {
  const list = document.getElementById("messages");
  if (!openUser) return;
  const links = [];
  for (let n = 1; n <= Number(openUser.count); n++) {
    const link = element("a", `${openUser.user} #${n}`);
    link.href = `/mail/${encodeURIComponent(openUser.user)}/${n}`;
    link.target = "_blank";
    const item = element("li");
    item.append(link);
    links.push(item);
  }
  list.replaceChildren(...links);
}

function connect() {
  const status = document.getElementById("status");
  const source = new EventSource("/events");
  source.onopen = () => { status.textContent = "live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; };
  source.onmessage = (message) => apply(JSON.parse(message.data));
}

window.addEventListener("hashchange", () => {
  chosen = location.hash.slice(1) || null;
  show();
});
connect();
show();
