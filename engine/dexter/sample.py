"""A synthetic assistant's records in the four raw formats, deterministic per seed.

One small world per seed (people, projects, preferences) and what an assistant would have logged about it:
multi-turn conversations whose follow-ups ("tell me more", "who works on it?") refer to earlier turns, facts
in d2_memory.json and brain.db, triples, goals with plans (patterns and conversation summaries), UI
interactions that end in a tool call, and tool executions that fail and are retried with another tool.
The lab ships nobody's records; this is what it trains on when a user brings none.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from engine.dexter.records import ARTIFACTS, BRAIN_DB, D2_MEMORY, UI_CALLS

NAMES = ["Maya", "Tomas", "Priya", "Jonah", "Lena", "Omar", "Ines", "Kofi", "Hana", "Mateo", "Sofia", "Arjun",
         "Elif", "Noah", "Zara", "Felix", "Amara", "Luca", "Nadia", "Theo", "Yara", "Ravi", "Clara", "Emil",
         "Leila", "Oscar", "Mina", "Diego", "Freya", "Sami", "Aisha", "Bruno", "Chiara", "Dmitri", "Esther", "Farid",
         "Greta", "Hugo", "Ingrid", "Jasper", "Keiko", "Lorenzo", "Marisol", "Nikolai", "Olga", "Pablo", "Quentin",
         "Rosa", "Stellan", "Tamsin", "Ulrich", "Valentina", "Wendell", "Ximena", "Yusuf", "Zofia", "Anouk", "Bjorn",
         "Camille", "Dario", "Eleni", "Fatima", "Gideon", "Helga", "Ibrahim", "Juno", "Kasimir", "Lucinda", "Magnus",
         "Noor", "Orla", "Petra", "Rafael", "Saoirse", "Tobias", "Uma", "Vikram", "Wilhelmina", "Yannick", "Zainab",
         "Agnieszka", "Bartholomew", "Cosima", "Desmond", "Evangeline", "Florian", "Giulia", "Horatio", "Isadora",
         "Jorge", "Katarina", "Leopold", "Matilda", "Nicolette", "Octavia", "Percival", "Rosalind", "Sebastian"]
SURNAMES = ["Okafor", "Lindqvist", "Moreau", "Tanaka", "Kowalski", "Haddad", "Fernandes", "Nakamura", "Schneider",
            "Abernathy", "Castellanos", "Duchamp", "Eriksson", "Fitzgerald", "Grimaldi", "Hoffmann", "Iglesias",
            "Jankowski", "Kaminski", "Laurent", "Mbeki", "Novak", "Oyelaran", "Petrov", "Quintero", "Rasmussen",
            "Sandoval", "Takahashi", "Uchenna", "Vasquez", "Whitfield", "Yamamoto", "Zielinski", "Achterberg",
            "Blackwood", "Chowdhury", "Delacroix", "Echeverria", "Forsberg", "Gallagher", "Halvorsen", "Ivanova",
            "Jaramillo", "Kristiansen", "Lombardi", "Montgomery", "Nakashima", "Oberholzer", "Pemberton", "Rosenthal",
            "Szymanski", "Thorvaldsen", "Underwood", "Villanueva", "Wojcik", "Xiong", "Yilmaz", "Zamora"]
CITIES = ["Lisbon", "Berlin", "Nairobi", "Osaka", "Toronto", "Lima", "Oslo", "Seoul", "Porto", "Denver", "Cairo",
          "Dublin", "Hanoi", "Quito", "Madrid", "Perth", "Marseille", "Kraków", "Montevideo", "Reykjavik", "Tbilisi",
          "Valparaíso", "Edinburgh", "Ljubljana", "Kyoto", "Accra", "Bangalore", "Cartagena", "Helsinki", "Antwerp",
          "Bologna", "Guadalajara", "Wellington", "Vancouver", "Marrakesh", "Istanbul", "Copenhagen", "Salzburg",
          "Tallinn", "Zanzibar", "Brisbane", "Winnipeg", "Santiago", "Budapest", "Bordeaux", "Gdańsk", "Mombasa"]
ROLES = ["designer", "accountant", "developer", "photographer", "teacher", "lawyer", "writer", "engineer",
         "translator", "marketer", "architect", "pharmacist", "illustrator", "economist", "copywriter", "nurse",
         "statistician", "carpenter", "electrician", "researcher", "librarian", "consultant", "veterinarian",
         "animator", "journalist", "physiotherapist", "sommelier", "cartographer", "recruiter", "surveyor"]
RELATIONS = ["colleague", "sister", "brother", "friend", "client", "manager", "neighbour", "cousin", "mentor",
             "landlord", "accountant", "teammate", "supplier", "investor"]
PROJECTS = ["Harbor", "Quill", "Bluebird", "Lantern", "Orchard", "Pebble", "Summit", "Tidewater", "Juniper",
            "Copper", "Meadow", "Falcon", "Willow", "Ember", "Nimbus", "Atlas", "Kestrel", "Marigold", "Driftwood",
            "Saffron", "Basalt", "Cobalt", "Heron", "Lighthouse", "Mosaic", "Nettle", "Obsidian", "Paprika",
            "Quarry", "Rookery", "Sequoia", "Thistle", "Umber", "Vantage", "Wavelength", "Yarrow", "Zephyr",
            "Aurora", "Bramble", "Citadel", "Dandelion", "Everglade", "Foxglove", "Glacier", "Hollyhock"]
KINDS = ["website", "mobile app", "newsletter", "online shop", "podcast", "course"]
STATUSES = ["in planning", "in progress", "launched", "paused"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
PREFERENCES = {"drink": ["tea", "coffee", "matcha", "sparkling water"], "editor": ["vim", "vs code", "emacs"],
               "meeting time": ["mornings", "afternoons", "late evenings"], "theme": ["dark mode", "light mode"],
               "music": ["jazz", "lo-fi beats", "classical music", "no music"]}
DIRS = ["~/projects", "~/documents", "~/downloads", "~/photos", "~/notes", "/var/log", "~/music", "~/desktop",
        "~/archive", "~/invoices", "~/screenshots", "~/backups", "/etc/nginx", "~/recordings", "~/contracts"]
FILE_STEMS = ["report", "budget", "notes", "config", "invoice", "todo", "draft", "readme", "minutes", "roadmap",
              "contract", "proposal", "timesheet", "itinerary", "manuscript", "changelog", "inventory", "brochure",
              "wireframes", "transcript", "payroll", "questionnaire", "receipts", "floorplan", "syllabus",
              "storyboard", "whitepaper", "postmortem", "benchmarks", "onboarding", "newsletter", "testimonials",
              "mortgage", "insurance", "prescription", "warranty", "portfolio", "headshots", "spreadsheet", "agenda"]
EXTENSIONS = ["pdf", "xlsx", "md", "yaml", "txt", "docx", "csv", "json", "pptx", "png", "odt", "toml"]
FILES = [f"{stem}.{EXTENSIONS[(i * k + k) % len(EXTENSIONS)]}" for i, stem in enumerate(FILE_STEMS) for k in (1, 5)]
TOPICS = ["hosting prices", "python packaging", "tax deadlines", "flight deals", "coffee machines", "rust async",
          "seo basics", "podcast microphones", "vegan recipes", "standing desks", "sourdough starters",
          "mechanical keyboards", "solar panels", "electric bicycles", "kubernetes autoscaling", "watercolour brushes",
          "marathon training", "houseplant fertiliser", "noise cancelling headphones", "typescript generics",
          "sleep hygiene", "composting bins", "mortgage refinancing", "espresso grinders", "birdwatching binoculars",
          "postgres indexing", "camping stoves", "language exchange apps", "retirement accounts", "ergonomic chairs",
          "climbing shoes", "fermentation crocks", "wedding photographers", "vintage synthesizers", "fountain pens",
          "accessibility guidelines", "chess openings", "pottery classes", "trail running", "insulation materials"]
SITES = [f"{w}.example.{tld}" for w, tld in zip(
    ["news", "docs", "shop", "blog", "weather", "recipes", "forum", "wiki", "maps", "status", "tickets", "library",
     "gallery", "market", "journal", "support", "careers", "events", "travel", "music"],
    ["org", "com", "net", "io", "org", "com", "net", "io", "org", "com", "net", "io", "org", "com", "net", "io",
     "org", "com", "net", "io"])]
SERVICES = ["nginx", "postgres", "redis", "docker", "cron", "rabbitmq", "elasticsearch", "grafana", "prometheus",
            "memcached", "haproxy", "mosquitto", "jenkins"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]

# Tool -> the instructions that call it. Tools with no instructions are reached only as a retry.
TOOL_TASKS = {
    "file_system.list": ["list the files in {dir}", "show me what is in {dir}", "what files are in {dir}?",
                         "give me a directory listing of {dir}", "anything new in {dir}?"],
    "file_system.read": ["open {file}", "read {file} for me", "show me the contents of {file}",
                         "pull up {file}", "display {file} please"],
    "file_system.search": ["find files named {file}", "where did I save {file}?", "locate {file} somewhere on disk"],
    "file_system.write": ["save the meeting notes to {file}", "write the summary into {file}",
                          "store these paragraphs in {file}", "overwrite {file} with the revised text"],
    "system_ops.get_info": ["check system status", "how much disk space is left?", "how is the machine doing?",
                            "report memory usage and uptime", "is the processor overheating?"],
    "system_ops.run_command": ["restart the {service} service", "reload {service}", "stop {service} for now",
                               "bounce {service} gracefully", "start {service} again"],
    "system_ops.run_as_admin": [],
    "web.search": ["search the web for {topic}", "look up {topic} online", "research {topic} for me",
                   "compare reviews of {topic}"],
    "web.fetch": ["fetch the page at {site}", "download {site} for reading", "grab the homepage of {site}"],
    "web.fetch_cached": [],
    "calendar.create_event": ["schedule a meeting with {person} on {day}", "put lunch with {person} on {day}",
                              "book a call with {contact} on {day}", "block {day} afternoon for {project}"],
    "calendar.list_events": ["what is on my calendar on {day}?", "am I free on {day}?",
                             "which appointments do I have {day}?"],
    "email.send": ["email {person} about {project}", "send {person} the {project} update",
                   "write to {contact} about the {file}", "reply to {contact} regarding {project}"],
    "email.queue": [],
    "email.search": ["find the last email from {person}", "did {person} write about {project}?",
                     "search my inbox for messages from {contact}"],
    "notes.add": ["remember that {person} likes {drink}", "note that {project} needs a logo",
                  "jot down that {contact} moved to {city}", "remind me that {project} invoices are overdue"],
    "code.run_tests": ["run the tests of {project}", "check that {project} still builds"],
    "code.git_status": ["what changed in {project}?", "show the uncommitted work in {project}"],
}
TOOLS = sorted(TOOL_TASKS)
# First tool -> (the error it can fail with, the tool that does the job after that error)
RETRIES = {
    "file_system.read": ("FileNotFoundError: {file} does not exist", "file_system.search"),
    "system_ops.run_command": ("PermissionError: permission denied for {service}", "system_ops.run_as_admin"),
    "web.fetch": ("TimeoutError: {site} did not answer within 30 s", "web.fetch_cached"),
    "calendar.create_event": ("ConflictError: {day} is already full", "calendar.list_events"),
    "email.send": ("SMTPError: the mail server refused the message", "email.queue"),
}
# An ambiguous instruction is settled by the app it was given in.
SEARCH_BY_APP = {"browser": "web.search", "files": "file_system.search", "mail": "email.search"}

# Goals and their plans; a constraint adds its own first step.
GOALS = [
    ("build a website for {project}", ["research similar {kind} sites", "sketch the page layout",
                                       "write the copy for {project}", "set up hosting", "launch {project}"]),
    ("plan a trip to {city}", ["check my calendar", "book a flight to {city}", "reserve a hotel in {city}",
                               "share the plan with {person}"]),
    ("hire a {role} for {project}", ["write the job post", "share the post with {person}", "review the applicants",
                                     "interview the best three", "send an offer"]),
    ("write a report on {project}", ["collect the numbers for {project}", "draft the report",
                                     "ask {person} for feedback"]),
    ("fix the login bug in {project}", ["reproduce the bug", "read the error logs", "write a failing test",
                                        "fix the code", "run the tests of {project}", "deploy the fix"]),
    ("organise a meeting with {person}", ["find a free slot", "book a room"]),
    ("grow the revenue of {project}", ["look at the sales of {project}", "survey the customers",
                                       "pick one price change", "test it for a month", "compare the revenue",
                                       "keep what worked"]),
    ("move {project} to a new server", ["back up {project}", "set up the new server", "copy the data",
                                        "switch the domain"]),
]
CONSTRAINTS = {"on a small budget": "set a small budget", "before {month}": "set a deadline in {month}",
               "with help from {person}": "ask {person} to join"}


@dataclass
class Person:
    name: str
    relation: str
    role: str
    city: str


@dataclass
class Project:
    name: str
    kind: str
    status: str
    revenue: int
    owner: str
    due: str


class World:
    """The people, projects and preferences of one seed, and every fact about them with its id."""

    def __init__(self, rng: random.Random):
        self.people = [Person(n, rng.choice(RELATIONS), rng.choice(ROLES), rng.choice(CITIES))
                       for n in rng.sample(NAMES, 12)]
        self.projects = [Project(n, rng.choice(KINDS), rng.choice(STATUSES), rng.randrange(0, 50) * 100,
                                 rng.choice(self.people).name, rng.choice(MONTHS)) for n in rng.sample(PROJECTS, 8)]
        self.preferences = {k: rng.choice(v) for k, v in PREFERENCES.items()}
        self.facts: list[dict] = []
        self.index: dict[tuple[str, str], str] = {}  # (subject, aspect) -> fact id
        for p in self.people:
            self._fact(p.name, "relation", f"{p.name} is my {p.relation}", "people")
            self._fact(p.name, "role", f"{p.name} works as a {p.role}", "people")
            self._fact(p.name, "city", f"{p.name} lives in {p.city}", "people")
        for pr in self.projects:
            self._fact(pr.name, "kind", f"{pr.name} is a {pr.kind} project", "projects")
            self._fact(pr.name, "status", f"{pr.name} is {pr.status}", "projects")
            self._fact(pr.name, "revenue", f"{pr.name} earns {pr.revenue} dollars a month", "projects")
            self._fact(pr.name, "owner", f"{pr.owner} works on {pr.name}", "projects")
            self._fact(pr.name, "due", f"{pr.name} is due in {pr.due}", "projects")
        for k, v in self.preferences.items():
            self._fact("me", k, f"I prefer {v} for {k}", "preferences")

    def _fact(self, subject: str, aspect: str, text: str, topic: str) -> None:
        fid = f"f{len(self.facts):04d}"
        self.facts.append({"id": fid, "text": text, "subject": subject, "topic": topic})
        self.index[(subject, aspect)] = fid

    def fact(self, subject: str, aspect: str) -> str:
        return self.index[(subject, aspect)]

    def text(self, fid: str) -> str:
        return self.facts[int(fid[1:])]["text"]

    def fill(self, template: str, rng: random.Random, **fixed: str) -> str:
        """`template` with every {slot} drawn from the world (or given)."""
        project = rng.choice(self.projects)
        values = {"person": rng.choice(self.people).name, "project": project.name, "kind": project.kind,
                  "city": rng.choice(CITIES), "role": rng.choice(ROLES), "month": rng.choice(MONTHS),
                  "dir": rng.choice(DIRS), "file": rng.choice(FILES), "topic": rng.choice(TOPICS),
                  "site": rng.choice(SITES), "service": rng.choice(SERVICES), "day": rng.choice(DAYS),
                  "drink": rng.choice(PREFERENCES["drink"]),
                  "contact": f"{rng.choice(NAMES)} {rng.choice(SURNAMES)}"}  # anyone in the address book
        values.update(fixed)
        return template.format(**values)


# ---- conversations ---------------------------------------------------------------------------------


def _turns(world: World, rng: random.Random) -> tuple[list[dict], dict | None]:
    """One conversation's turns (user turns name the facts they ask for) and, for a goal, its summary."""
    kind = rng.choice(["projects", "person", "project", "preference", "goal"])
    user: list[tuple[str, list[str]]] = []
    summary = None
    if kind == "projects":
        kinds = sorted({p.kind for p in world.projects})
        k = rng.choice(kinds)
        mine = [p for p in world.projects if p.kind == k][:3]
        q = rng.choice(["what {k} projects do I have?", "list my {k} projects", "which {k} projects am I running?"])
        user.append((q.format(k=k), [world.fact(p.name, "kind") for p in mine]))
        first, best = mine[0], max(mine, key=lambda p: p.revenue)
        follow = [(rng.choice(["tell me more", "tell me more about the first one"]),
                   [world.fact(first.name, "status"), world.fact(first.name, "revenue")]),
                  (rng.choice(["which one earns the most?", "which one is most profitable?"]),
                   [world.fact(best.name, "revenue")]),
                  (rng.choice(["who works on the first one?", "who is on the first one?"]),
                   [world.fact(first.name, "owner")])]
        user += rng.sample(follow, rng.randint(1, 2))
    elif kind == "person":
        p = rng.choice(world.people)
        q = rng.choice(["who is {n}?", "remind me who {n} is", "how do I know {n}?"])
        user.append((q.format(n=p.name), [world.fact(p.name, "relation")]))
        follow = [(rng.choice(["what do they do?", "what is their job?"]), [world.fact(p.name, "role")]),
                  (rng.choice(["where do they live?", "which city are they in?"]), [world.fact(p.name, "city")])]
        user += rng.sample(follow, rng.randint(1, 2))
    elif kind == "project":
        pr = rng.choice(world.projects)
        q = rng.choice(["how is {p} going?", "what is the state of {p}?", "give me an update on {p}"])
        user.append((q.format(p=pr.name), [world.fact(pr.name, "status"), world.fact(pr.name, "revenue")]))
        follow = [(rng.choice(["who works on it?", "who is running it?"]), [world.fact(pr.name, "owner")]),
                  (rng.choice(["when is it due?", "what is its deadline?"]), [world.fact(pr.name, "due")])]
        user += rng.sample(follow, rng.randint(0, 2))
    elif kind == "preference":
        k = rng.choice(sorted(world.preferences))
        q = rng.choice(["what {k} do I prefer?", "which {k} do I like?"])
        user.append((q.format(k=k), [world.fact("me", k)]))
    else:
        goal, plan, constraints = _goal(world, rng)
        user.append((f"help me {goal}", []))
        user.append(("what should I do first?", []))
        summary = {"text": f"planned how to {goal}", "goal": goal, "plan": plan, "constraints": constraints}
    turns = []
    for text, fact_ids in user:
        turns.append({"role": "user", "text": text, "fact_ids": fact_ids})
        answer = "; ".join(world.text(f) for f in fact_ids) if fact_ids else \
            "here is a plan: " + " then ".join(summary["plan"]) if summary else "sure"
        turns.append({"role": "assistant", "text": answer, "fact_ids": fact_ids})
    return turns, summary


def _goal(world: World, rng: random.Random) -> tuple[str, list[str], list[str]]:
    template, steps = rng.choice(GOALS)
    project = rng.choice(world.projects)
    fixed = {"project": project.name, "kind": project.kind, "person": rng.choice(world.people).name,
             "city": rng.choice(CITIES), "role": rng.choice(ROLES), "month": rng.choice(MONTHS)}
    plan = [s.format(**fixed) for s in steps]
    constraints = []
    if rng.random() < 0.4:
        c, first = rng.choice(sorted(CONSTRAINTS.items()))
        constraints.append(c.format(**fixed))
        plan.insert(0, first.format(**fixed))
    return template.format(**fixed), plan, constraints


# ---- tools ---------------------------------------------------------------------------------------


def _available(tools: list[str], rng: random.Random) -> list[str]:
    others = [t for t in TOOLS if t not in tools]
    chosen = tools + rng.sample(others, rng.randint(2, 5))
    rng.shuffle(chosen)
    return chosen


def _ui_call(world: World, rng: random.Random) -> dict:
    app = rng.choice(["terminal", "browser", "files", "mail", "calendar", "editor"])
    if app in SEARCH_BY_APP and rng.random() < 0.3:
        instruction, tool = world.fill("search for {topic}", rng), SEARCH_BY_APP[app]
    else:
        tool = rng.choice([t for t in TOOLS if TOOL_TASKS[t]])
        instruction = world.fill(rng.choice(TOOL_TASKS[tool]), rng)
    context = {"app": app, "window": rng.choice([p.name for p in world.projects] + FILES)}
    if rng.random() < 0.5:
        context["selection"] = rng.choice(FILES + DIRS)
    return {"instruction": instruction, "ui_context": context, "available_tools": _available([tool], rng),
            "tool_call": {"name": tool, "arguments": {"text": instruction}}}


def _session(world: World, rng: random.Random, session: str, first_id: int) -> list[dict]:
    """One task's tool executions: a first attempt and, after a failure, a retry with another tool."""
    # half the sessions start with a tool that can fail, so corrections are common enough to learn from
    tool = rng.choice(sorted(RETRIES) if rng.random() < 0.5 else [t for t in TOOLS if TOOL_TASKS[t]])
    slots = {k: world.fill("{" + k + "}", rng) for k in ("file", "service", "site", "day", "person", "project",
                                                         "dir", "topic", "drink", "contact", "city")}
    task = rng.choice(TOOL_TASKS[tool]).format(**slots)
    retry = RETRIES.get(tool)
    available = _available([tool] + ([retry[1]] if retry else []), rng)
    arts = []

    def artifact(tool: str, ok: bool, error: str = "", retry_of: str = "") -> dict:
        rid = f"art_{first_id + len(arts):05d}"
        arts.append({"id": rid, "session": session, "task": task, "tool": tool, "arguments": dict(slots),
                     "available_tools": available, "status": "success" if ok else "error", "error": error or None,
                     "result": "ok" if ok else None, "retry_of": retry_of or None,
                     "timestamp": f"2025-01-01T00:00:{len(arts):02d}"})
        return arts[-1]

    if retry and rng.random() < 0.6:
        failed = artifact(tool, False, retry[0].format(**slots))
        again_ok = rng.random() < 0.9
        artifact(retry[1], again_ok, "" if again_ok else "RuntimeError: the tool crashed", failed["id"])
    else:
        artifact(tool, True)
    return arts


# ---- what a tool printed ---------------------------------------------------------------------------
# A real assistant's artifacts hold each call's output (listings, pages, logs, test reports), most of the
# text its records hold. Words for code identifiers, companies and page titles, composed so a seed's
# outputs repeat some names (a project's modules, an inbox's senders) and vary the rest.
CODE_WORDS = ["parse", "render", "invoice", "client", "cache", "token", "session", "upload", "export", "import",
              "report", "schedule", "retry", "queue", "worker", "payment", "account", "profile", "search", "index",
              "config", "loader", "handler", "router", "model", "view", "template", "migration", "schema", "user",
              "order", "cart", "item", "price", "discount", "shipping", "address", "notify", "webhook", "auth",
              "login", "password", "avatar", "image", "resize", "thumbnail", "video", "stream", "buffer", "socket",
              "server", "request", "response", "header", "cookie", "timeout", "metric", "logger", "trace", "batch",
              "job", "event", "reminder", "backup", "restore", "archive", "compress", "encrypt", "signature",
              "verify", "validate", "sanitize", "format", "currency", "locale", "translate", "feed", "sitemap",
              "rank", "score", "filter", "sort", "paginate", "cursor", "query", "builder", "adapter", "registry",
              "plugin", "hook", "signal", "state", "store", "reducer", "action", "effect", "selector", "component",
              "layout", "footer", "sidebar", "modal", "dialog", "button", "form", "field", "widget", "chart", "grid",
              "theme", "palette", "font", "icon", "asset", "bundle", "manifest", "health", "probe", "deploy",
              "release", "version", "license", "tenant", "quota", "limit", "refund", "receipt", "ledger", "balance",
              "transfer", "currency", "coupon", "catalog", "inventory", "warehouse", "parcel", "courier", "tracking",
              "subscriber", "campaign", "audience", "segment", "funnel", "cohort", "retention", "churn", "forecast"]
CLASS_SUFFIXES = ["Service", "Manager", "Controller", "Repository", "Factory", "Client", "Handler", "Provider",
                  "Serializer", "Validator", "Builder", "Adapter", "Error", "Config", "View", "Task", "Policy"]
COMPANY_PARTS = (["North", "Blue", "Silver", "Bright", "Green", "Iron", "Red", "Clear", "Swift", "Deep", "True", "Open",
                  "Solid", "Wild", "Quiet", "Bold", "Prime", "Urban", "Lunar", "Polar", "Golden", "Little", "Grand"],
                 ["field", "stone", "wave", "leaf", "bridge", "path", "forge", "harbor", "peak", "river", "light",
                  "works", "craft", "line", "point", "gate", "wood", "brook", "ridge", "mark", "spring", "vale"],
                 ["Labs", "Studio", "Partners", "Systems", "Media", "Analytics", "Supply", "Digital", "Group", "Co"])
PAGE_OPENERS = ["The {n} best {topic} of {year}, tested", "How to choose {topic}: a buyer's guide",
                "{Topic} explained for beginners", "Why everyone is talking about {topic}",
                "{n} mistakes people make with {topic}", "{Topic}: prices compared across {n} shops",
                "A field guide to {topic}", "What we learned from {n} months of {topic}",
                "{Topic} forum: recommendations wanted", "Reviews of {topic} from real customers"]
SNIPPETS = ["we compared {n} options over {m} weeks and picked a clear winner", "prices start at {price} dollars",
            "most readers preferred the cheaper model", "updated {month} {year} with new measurements",
            "the short answer depends on your budget and space", "our editors tested each one at home",
            "a detailed comparison table is at the end", "several readers reported problems after {m} months",
            "the manufacturer lists a warranty of {m} years", "shipping takes {m} to {n} days in most regions"]
NOUNS = ["budget", "deadline", "customer", "supplier", "contract", "meeting", "schedule", "estimate", "draft",
         "feedback", "summary", "decision", "question", "problem", "solution", "option", "proposal", "review",
         "quarter", "month", "week", "morning", "evening", "weekend", "holiday", "office", "warehouse", "kitchen",
         "garden", "garage", "studio", "library", "station", "airport", "hotel", "restaurant", "museum", "market",
         "bakery", "pharmacy", "clinic", "school", "university", "village", "neighbourhood", "coast", "mountain",
         "river", "forest", "island", "bicycle", "camera", "laptop", "printer", "monitor", "keyboard", "charger",
         "battery", "cable", "router", "speaker", "microphone", "notebook", "pencil", "envelope", "package",
         "parcel", "ticket", "passport", "receipt", "invoice", "payment", "refund", "discount", "subscription",
         "membership", "account", "password", "backup", "update", "upgrade", "license", "warranty", "repair",
         "delivery", "shipment", "order", "recipe", "ingredient", "dinner", "breakfast", "coffee", "sandwich",
         "weather", "forecast", "temperature", "storm", "sunshine", "article", "chapter", "paragraph", "headline",
         "interview", "podcast", "episode", "playlist", "concert", "festival", "exhibition", "workshop", "lecture",
         "seminar", "conference", "presentation", "spreadsheet", "diagram", "prototype", "milestone", "roadmap",
         "strategy", "audience", "campaign", "newsletter", "website", "homepage", "checkout", "dashboard",
         "analytics", "revenue", "expense", "salary", "pension", "mortgage", "insurance", "tax", "loan", "savings"]
ADJECTIVES = ["quick", "careful", "detailed", "rough", "final", "early", "late", "urgent", "optional", "cheap",
              "expensive", "reliable", "noisy", "quiet", "heavy", "light", "portable", "sturdy", "fragile", "modern",
              "classic", "popular", "obscure", "seasonal", "annual", "monthly", "weekly", "remote", "local",
              "international", "shared", "private", "public", "temporary", "permanent", "generous", "modest",
              "ambitious", "practical", "elegant", "compact", "spacious", "warm", "cold", "bright", "dark", "fresh",
              "organic", "digital", "handmade", "secondhand", "refurbished", "discounted", "delayed", "confirmed"]
VERBS = ["reviewed", "approved", "rejected", "postponed", "cancelled", "scheduled", "delivered", "shipped",
         "returned", "repaired", "replaced", "upgraded", "renewed", "signed", "drafted", "rewrote", "translated",
         "measured", "compared", "tested", "recommended", "mentioned", "booked", "ordered", "paid", "refunded",
         "uploaded", "downloaded", "printed", "scanned", "archived", "forwarded", "summarised", "organised",
         "planned", "finished", "started", "paused", "moved", "painted", "cleaned", "cooked", "visited", "called"]
PREPOSITIONS = ["before", "after", "during", "without", "despite", "because of", "next to", "instead of", "for"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ven", "tor", "sel", "dar", "qui", "bel", "zo", "fin", "gal", "mor", "pra",
             "tix", "nu", "ler", "vo", "san", "ix", "ar", "en", "ul", "os", "ri", "ta", "ne", "co", "ly", "dra", "sto",
             "plex", "gen", "mat", "vis", "ton", "ber", "cal", "dex", "fo", "hu", "jun", "kel", "pe", "wen"]
STATUS_WORDS = ["active (running)", "inactive (dead)", "activating (start)", "reloading", "active (exited)"]


def _lexicon(seed: int, n: int) -> list[str]:
    """A seed's proper names for outputs (brands, packages, companies' short names): composed from syllables,
    so a set holds thousands that recur across its outputs, as real records do."""
    rng, names = random.Random(f"{seed}:lexicon"), set()
    while len(names) < n:
        names.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(names)


def _sentence(rng: random.Random) -> str:
    """One plain sentence of the kind documents, pages and mails are full of."""
    return (f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} was {rng.choice(VERBS)} {rng.choice(PREPOSITIONS)} "
            f"the {rng.choice(NOUNS)}")


def _company(rng: random.Random, lexicon: list[str]) -> str:
    first, second, kind = COMPANY_PARTS
    name = rng.choice(lexicon).capitalize() if rng.random() < 0.7 else f"{rng.choice(first)}{rng.choice(second)}"
    return f"{name} {rng.choice(kind)}"


def _identifier(rng: random.Random, parts: int) -> str:
    return "_".join(rng.sample(CODE_WORDS, parts))


def _class_name(rng: random.Random) -> str:
    return "".join(w.capitalize() for w in rng.sample(CODE_WORDS, rng.randint(1, 2))) + rng.choice(CLASS_SUFFIXES)


def _hexid(rng: random.Random, n: int = 7) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _modules(project: str, seed: int) -> list[str]:
    """A project's source files: the same for every call about the project in one seed's records."""
    rng = random.Random(f"{seed}:modules:{project}")
    return [f"src/{project.lower()}/{_identifier(rng, rng.randint(1, 2))}.py" for _ in range(rng.randint(6, 14))]


def _size(rng: random.Random) -> str:
    return f"{rng.randint(1, 999)}{rng.choice(['', ' K', ' M'])}"


def tool_output(tool: str, args: dict, seed: int, rid: str, lexicon: list[str]) -> str:
    """The text a successful call of `tool` printed, deterministic per seed and artifact; `lexicon` holds the
    seed's proper names (_lexicon)."""
    rng = random.Random(f"{seed}:{rid}")
    year, month = rng.choice([2023, 2024, 2025]), rng.choice(MONTHS)
    date = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    name = args.get("contact") or args.get("person") or "someone"
    first = name.split()[0].lower()
    if tool in ("file_system.list", "file_system.search"):
        heads = FILE_STEMS + lexicon
        tails = [month.lower(), str(year), "final", "draft"]
        stems = [f"{rng.choice(heads)}_{rng.choice([_identifier(rng, 1), rng.choice(lexicon), *tails])}"
                 for _ in range(rng.randint(20, 90))]
        return "\n".join(f"{_size(rng)} {year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
                         f"{args.get('dir', '~')}/{s}.{rng.choice(EXTENSIONS)}" for s in stems)
    if tool == "file_system.read":
        project = rng.choice(PROJECTS)
        return (f"# {args.get('file', 'notes.md')} last edited by {name} on {date}. {rng.choice(SNIPPETS)}; "
                f"{project} owes {_company(rng, lexicon)} {rng.randint(100, 9999)} dollars, due in {month}. "
                f"Contact {first}@{_company(rng, lexicon).split()[0].lower()}.com about invoice "
                f"{_hexid(rng, 6).upper()}. "
                + ". ".join(_sentence(rng) for _ in range(rng.randint(10, 40))) + ".")
    if tool == "file_system.write":
        return f"wrote {rng.randint(120, 48000)} bytes to {args.get('file', 'notes.md')} (sha {_hexid(rng)})"
    if tool in ("web.search", "web.fetch", "web.fetch_cached"):
        topic = args.get("topic", "tools")
        values = {"topic": topic, "Topic": topic.capitalize(), "n": rng.randint(3, 25), "m": rng.randint(2, 11),
                  "year": year, "month": month, "price": rng.randint(9, 900)}
        hits = []
        for _ in range(rng.randint(8, 24)):
            site = f"{rng.choice(lexicon)}.{rng.choice(['com', 'org', 'net', 'io', 'co'])}"
            values["topic"] = f"{rng.choice(lexicon).capitalize()} {topic}" if rng.random() < 0.5 else topic
            hits.append(f"{rng.choice(PAGE_OPENERS).format(**values)} - {site} - "
                        f"{rng.choice(SNIPPETS).format(**values)}; {_sentence(rng)}")
        return "\n".join(hits)
    if tool == "system_ops.get_info":
        return (f"cpu {rng.randint(1, 99)}% load {rng.uniform(0, 8):.2f} memory {rng.uniform(1, 15):.1f} of 16.0 GiB "
                f"disk {rng.randint(5, 900)} GB free uptime {rng.randint(1, 90)} days kernel 6.{rng.randint(1, 12)}."
                f"{rng.randint(0, 60)} host {rng.choice(lexicon)}-{rng.randint(1, 40)} running "
                + ", ".join(rng.sample(lexicon, rng.randint(20, 60))))
    if tool in ("system_ops.run_command", "system_ops.run_as_admin"):
        service = args.get("service", "nginx")
        return (f"{service}.service {rng.choice(STATUS_WORDS)} since {date} pid {rng.randint(300, 65000)} "
                f"memory {rng.uniform(1, 900):.1f}M tasks {rng.randint(1, 64)}")
    if tool in ("calendar.create_event", "calendar.list_events"):
        head = f"created event {_hexid(rng, 8)}; the day now holds:\n" if tool == "calendar.create_event" else ""
        return head + "\n".join(f"{rng.randint(7, 19):02d}:{rng.choice(['00', '15', '30', '45'])} "
                         f"{rng.choice(['call', 'review', 'standup', 'lunch', 'interview', 'planning'])} "
                         f"with {rng.choice(NAMES)} {rng.choice(SURNAMES)} ({_company(rng, lexicon)})"
                         for _ in range(rng.randint(6, 24)))
    if tool in ("email.send", "email.queue", "email.search"):
        lines = []
        for _ in range(rng.randint(8, 30)):
            first_name, surname = rng.choice(NAMES), rng.choice(SURNAMES)
            domain = _company(rng, lexicon).split()[0].lower()
            lines.append(f"{rng.randint(1, 28):02d} {month} from {first_name} {surname} "
                         f"<{first_name.lower()}.{surname.lower()}@{domain}.com> "
                         f"subject: {rng.choice(['re: ', 'fwd: ', ''])}{_identifier(rng, 2).replace('_', ' ')} "
                         f"for {args.get('project', rng.choice(PROJECTS))}: {_sentence(rng)}")
        if tool != "email.search":
            verb = "sent" if tool == "email.send" else "queued for sending"
            lines.insert(0, f"message <{_hexid(rng, 12)}@{rng.choice(lexicon)}.com> {verb}; the thread so far:")
        return "\n".join(lines)
    if tool == "notes.add":
        return f"note n-{rng.randint(1000, 99999)} about {rng.choice(lexicon).capitalize()} saved in " \
            f"{rng.choice(['inbox', 'ideas', 'people', 'work'])}: {_sentence(rng)}"
    project = args.get("project", rng.choice(PROJECTS))
    modules = _modules(project, seed)
    if tool == "code.run_tests":
        failed = rng.sample(modules, rng.randint(0, 2))
        names = [f"{m.replace('src/', 'tests/').rsplit('/', 1)[0]}/test_{m.rsplit('/', 1)[1]}::test_"
                 f"{_identifier(rng, rng.randint(1, 3))}" for m in failed]
        passed = rng.randint(20, 400)
        plugins = ", ".join(f"{p}-{rng.randint(0, 9)}.{rng.randint(0, 30)}"
                            for p in rng.sample(lexicon, rng.randint(3, 10)))
        return f"plugins: {plugins}; collected {passed + len(failed)} items; {passed} passed, {len(failed)} " \
               f"failed in {rng.uniform(0.5, 90):.1f}s" + "".join(f"\nFAILED {n} - {_class_name(rng)}" for n in names)
    # code.git_status
    changed = rng.sample(modules, rng.randint(1, min(4, len(modules))))
    return f"on branch {rng.choice(['main', 'develop', 'fix/' + rng.choice(lexicon)])} at {_hexid(rng)}\n" + \
        "\n".join(f"{rng.choice(['modified', 'new file', 'deleted'])}: {m}" for m in changed)


# ---- writing -------------------------------------------------------------------------------------


def generate(seed: int, size: int) -> dict:
    """Everything a raw set holds, as plain data: {"d2": ..., "brain": {table: rows}, "ui": [...], "art": [...]}."""
    rng = random.Random(seed)
    world = World(rng)
    conversations, summaries = [], []
    for i in range(size):
        turns, summary = _turns(world, rng)
        cid = f"c{i:05d}"
        conversations.append({"id": cid, "started": f"2025-01-{1 + i % 28:02d}T09:00:00", "turns": turns})
        if summary:
            summaries.append({"conversation_id": cid, **summary})
    people = [f for f in world.facts if f["topic"] != "projects"]
    projects = [f for f in world.facts if f["topic"] == "projects"]
    entities = [{"name": p.name, "type": "person", "attributes": {"relation": p.relation, "role": p.role,
                                                                  "city": p.city}} for p in world.people]
    entities += [{"name": p.name, "type": "project", "attributes": {"kind": p.kind, "status": p.status,
                                                                   "owner": p.owner}} for p in world.projects]
    topics = [{"name": t, "fact_ids": [f["id"] for f in world.facts if f["topic"] == t]}
              for t in ("people", "projects", "preferences")]
    d2 = {"version": 2, "conversations": conversations, "facts": people, "entities": entities, "topics": topics,
          "summaries": summaries}

    triples = [(p.name, "lives in", p.city) for p in world.people] + \
              [(p.name, "works as a", p.role) for p in world.people] + \
              [(p.name, "is owned by", p.owner) for p in world.projects] + \
              [(p.name, "is due in", p.due) for p in world.projects]
    patterns = []
    for i in range(max(1, size // 4)):
        goal, plan, constraints = _goal(world, rng)
        patterns.append((i, goal, json.dumps(plan), json.dumps(constraints), round(rng.uniform(0.5, 1.0), 2)))
    history = []
    for i in range(max(1, size // 2)):
        subject = rng.choice(world.people + world.projects)
        if isinstance(subject, Person):
            aspect, q = rng.choice([("city", "where does {n} live?"), ("role", "what does {n} do for work?")])
        else:
            aspect, q = rng.choice([("due", "when is {n} due?"), ("owner", "who owns {n}?"),
                                    ("revenue", "how much does {n} earn?")])
        history.append((i, f"2025-02-{1 + i % 28:02d}T10:00:00", q.format(n=subject.name), "",
                        json.dumps([world.fact(subject.name, aspect)]), "answered"))
    brain = {"facts": [(f["id"], f["text"], f["subject"], f["topic"], 0.9) for f in projects],
             "triples": [t + (1.0,) for t in triples], "patterns": patterns, "history": history}
    ui = [_ui_call(world, rng) for _ in range(size)]
    art: list[dict] = []
    for s in range(size):
        art += _session(world, rng, f"s{s:04d}", len(art))
    lexicon = _lexicon(seed, 8 * size)
    for a in art:  # outputs from their own generator, so the records' other draws are as they were
        if a["status"] == "success":
            a["result"] = tool_output(a["tool"], a["arguments"], seed, a["id"], lexicon)
    return {"d2": d2, "brain": brain, "ui": ui, "art": art}


BRAIN_SCHEMA = {
    "facts": "CREATE TABLE facts (id TEXT PRIMARY KEY, text TEXT NOT NULL, subject TEXT, topic TEXT, confidence REAL)",
    "triples": "CREATE TABLE triples (subject TEXT, predicate TEXT, object TEXT, confidence REAL)",
    "patterns": "CREATE TABLE patterns (id INTEGER PRIMARY KEY, trigger TEXT, steps TEXT, constraints TEXT, "
                "success_rate REAL)",
    "history": "CREATE TABLE history (id INTEGER PRIMARY KEY, timestamp TEXT, query TEXT, context TEXT, "
               "fact_ids TEXT, outcome TEXT)",
}


class SampleDirError(ValueError):
    """The target folder already holds raw records; the message is one sentence."""


def write_sample(out_dir: str | Path, seed: int = 0, size: int = 400, force: bool = False) -> dict[str, int]:
    """Write a synthetic raw set into `out_dir`; returns how many records of each kind it wrote."""
    out = Path(out_dir)
    existing = [p.name for p in [out / D2_MEMORY, out / BRAIN_DB, out / UI_CALLS] if p.exists()]
    existing += [p.name for p in out.glob(ARTIFACTS)] if out.is_dir() else []
    if existing and not force:
        raise SampleDirError(f"{out} already holds raw records ({existing[0]} among {len(existing)} files); "
                             "pass --force to replace them or choose an empty folder.")
    data = generate(seed, size)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(ARTIFACTS):  # a smaller set must not leave the old set's artifacts behind
        old.unlink()
    _write_text(out / D2_MEMORY, json.dumps(data["d2"], indent=1) + "\n")
    _write_text(out / UI_CALLS, "".join(json.dumps(r) + "\n" for r in data["ui"]))
    for a in data["art"]:
        _write_text(out / f"{a['id']}.json", json.dumps(a, indent=1) + "\n")
    tmp = out / f".{BRAIN_DB}.tmp"
    tmp.unlink(missing_ok=True)
    db = sqlite3.connect(tmp)
    try:
        for table, schema in BRAIN_SCHEMA.items():
            db.execute(schema)
            rows = data["brain"][table]
            if rows:
                db.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(rows[0]))})", rows)
        db.commit()
    finally:
        db.close()
    os.replace(tmp, out / BRAIN_DB)
    return {"conversations": len(data["d2"]["conversations"]), "facts": len(data["d2"]["facts"]) +
            len(data["brain"]["facts"]), "summaries": len(data["d2"]["summaries"]),
            "triples": len(data["brain"]["triples"]), "patterns": len(data["brain"]["patterns"]),
            "history": len(data["brain"]["history"]), "ui_calls": len(data["ui"]), "artifacts": len(data["art"])}


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
