"""The report's plan as text (the terminal, before the first section and beside the measured
times at the end) and as HTML (the page's summary): each section, what it counts, its
estimate and, once run, its measured time. Reads a plan record (``model.pipeline``'s
``plan_record``); computes nothing."""
import html

# What each section's line lists of the plan's counts.
SECTION_COUNTS = {
    "cam": ("Score-CAM channels",),
    "max_activation": ("scanned test images",),
    "feature_maps": ("feature-map test images",),
    "gradient_ascent": ("class-model steps", "scanned test images"),
    "evaluation": ("evaluation photos", "randomization photos", "randomization stages",
                   "Score-CAM channels"),
    "explorer": ("explorer photos", "Score-CAM channels"),
}
FIXED = {"plan": "measuring one photo per kind of work",
         "accuracy": "every test image (run before the plan: its time is measured)",
         "occlusion": "2 photos", "deconvnet": "1 photo, every conv layer"}


def duration(seconds):
    """``42 s`` or ``4 min 05 s``."""
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def count_text(record, name):
    """One count as the plan shows it: ``8 of 32`` when reduced, else the value; Score-CAM's
    channels say which method runs."""
    value, full = record["counts"][name], record["full_counts"][name]
    if name == "Score-CAM channels":
        return ("exact Score-CAM" if value >= full else
                f"Faster Score-CAM on {value} of {full} channels")
    return f"{name} {value}" + (f" of {full}" if value < full else "")


def section_text(record, section):
    """What ``section`` counts in this plan, one phrase."""
    if section in FIXED:
        return FIXED[section]
    return ", ".join(count_text(record, name) for name in SECTION_COUNTS.get(section, ()))


def headline(record):
    """The plan's first line: the budget and the estimated total."""
    budget = record["budget_seconds"]
    total = duration(sum(record["estimate"].values()))
    if budget is None:
        return f"plan: the full run, estimated {total}"
    over = sum(record["estimate"].values()) > budget
    return (f"plan: budget {duration(budget)}, estimated {total}"
            + (" (the smallest plan: it cannot fit the budget)" if over else ""))


def reduced_text(record):
    """What was reduced and which flag gives the full run, or ''."""
    if not record["reduced"]:
        return ""
    reduced = "; ".join(count_text(record, name) for name in record["reduced"])
    return (f"reduced to fit the budget: {reduced}. The full run (--full) is estimated at "
            f"{duration(record['full_estimate'])}.")


def plan_lines(record, measured=None):
    """The plan as terminal lines; with ``measured`` (section -> seconds) the measured time
    beside each estimate."""
    rows = [(name, section_text(record, name), duration(seconds),
             duration(measured[name]) if measured and name in measured else "")
            for name, seconds in record["estimate"].items()]
    total = sum(record["estimate"].values())
    rows.append(("total", "", duration(total),
                 duration(sum(measured.values())) if measured else ""))
    width = [max(len(row[column]) for row in rows) for column in range(3)]
    heading = ("section".ljust(width[0]) + "  " + "counts".ljust(width[1]) + "  "
               + "estimate".rjust(width[2]) + ("  measured" if measured else ""))
    lines = [headline(record), heading]
    lines += [f"{a.ljust(width[0])}  {b.ljust(width[1])}  {c.rjust(width[2])}"
              + (f"  {d.rjust(8)}" if measured else "") for a, b, c, d in rows]
    return lines + ([reduced_text(record)] if record["reduced"] else [])


def plan_html(record, measured):
    """The plan's table for the page's summary: section, counts, estimate, measured."""
    escape = html.escape
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(section_text(record, name))}</td>"
        f"<td>{duration(seconds)}</td>"
        f"<td>{duration(measured[name]) if name in measured else '-'}</td></tr>"
        for name, seconds in record["estimate"].items())
    total = (f"<tr><td><b>total</b></td><td></td><td>{duration(sum(record['estimate'].values()))}"
             f"</td><td>{duration(sum(measured.values()))}</td></tr>")
    reduced = reduced_text(record)
    return ("<h2>Plan: what this report spent its time on</h2>"
            f"<p>{escape(headline(record))}.</p><div class='scroll'><table><tr><th>section</th>"
            "<th>counts</th><th>estimate</th><th>measured</th></tr>" + rows + total
            + "</table></div>"
            + (f"<p class='note'>{escape(reduced)}</p>" if reduced else ""))
