"""Job schedules as the Dapr Scheduler computes them (diagridio/go-etcd-cron + dapr/kit).

* ``schedule``: a 6-field cron spec (seconds first), a descriptor (``@hourly`` ...) or
  ``@every <Go duration>`` (dapr/kit ``cron/constantdelay.go``: millisecond resolution,
  the next tick is ``last + delay`` with the sub-millisecond part of ``last`` dropped).
* ``due_time`` / ``ttl``: RFC 3339, a Go duration from now (from the due time for ttl),
  or a non-repeating ISO 8601 duration (``internal/scheduler/builder.go`` parsePointInTime).
* Counting (``internal/counter/counter.go``): a job with no schedule fires once at its
  due time; a scheduled job first fires at the due time if it has one, else one period
  after creation; each tick is ``cron.next(last scheduled time)``; ``repeats`` bounds the
  count, the ttl the last tick. A job that will not fire again is deleted.

Times are POSIX seconds (floats); cron fields are evaluated in UTC. (The real
Scheduler uses its host's local zone; in UTC they coincide.)
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import re
from dataclasses import dataclass

from dateutil.relativedelta import relativedelta

__all__ = [
    "CronSchedule",
    "EverySchedule",
    "JobTimes",
    "ScheduleError",
    "parse_go_duration",
    "parse_job_times",
    "parse_schedule",
]


class ScheduleError(ValueError):
    """A schedule, due time or ttl the Scheduler would refuse."""


_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration``, in seconds: ``1h30m``, ``500ms``, ``-1.5s``, ``0``."""
    rest = text
    sign = 1.0
    if rest[:1] in "+-" and rest:
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ScheduleError(f'time: invalid duration "{text}"')
    total = 0.0
    pos = 0
    while pos < len(rest):
        match = _GO_DURATION.match(rest, pos)
        if match is None or match.group(1) in ("", "."):
            raise ScheduleError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * total


_ISO_DURATION = re.compile(
    r"^(?:R(\d*)/)?P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?"
    r"(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$"
)
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")


def parse_point_in_time(text: str, now: float) -> float:
    """RFC 3339, else a Go duration after ``now``, else an ISO 8601 duration after ``now``."""
    if _RFC3339.match(text):
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    try:
        return now + parse_go_duration(text)
    except ScheduleError:
        pass
    match = _ISO_DURATION.match(text)
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ScheduleError("due time format not recognized")
    repeats, years, months, weeks, days, hours, minutes, seconds = match.groups()
    if repeats is not None:
        raise ScheduleError("repeats not supported for due time")
    start = dt.datetime.fromtimestamp(now, dt.UTC)
    moved = start + relativedelta(
        years=int(years or 0), months=int(months or 0), days=int(days or 0) + 7 * int(weeks or 0)
    )
    return moved.timestamp() + int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)


@dataclass(frozen=True, slots=True)
class EverySchedule:
    """``@every <duration>``."""

    delay: float

    def next(self, after: float) -> float:
        millis = math.floor(after * 1000) / 1000
        return millis + self.delay


@dataclass(frozen=True, slots=True)
class CronSchedule:
    """A 6-field cron spec: second minute hour day-of-month month day-of-week."""

    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    days_star: bool
    weekdays_star: bool

    def _day_matches(self, when: dt.datetime) -> bool:
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.weekdays
        if self.days_star or self.weekdays_star:
            return dom and dow
        return dom or dow

    def next(self, after: float) -> float:
        # robfig/cron SpecSchedule.Next, as forked in dapr/kit: advance the coarsest
        # field that does not match (truncating the finer ones the first time), and
        # start over from the top whenever a field wraps around.
        t = dt.datetime.fromtimestamp(math.floor(after) + 1, dt.UTC)
        year_limit = t.year + 5
        added = False
        while True:
            if t.year > year_limit:
                raise ScheduleError("schedule has no next activation within five years")
            wrapped = False
            while t.month not in self.months:
                if not added:
                    added = True
                    t = t.replace(day=1, hour=0, minute=0, second=0)
                t = t + relativedelta(months=1)
                if t.month == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            while not self._day_matches(t):
                if not added:
                    added = True
                    t = t.replace(hour=0, minute=0, second=0)
                t = t + dt.timedelta(days=1)
                if t.day == 1:
                    wrapped = True
                    break
            if wrapped:
                continue
            for unit, attribute, finer in (
                (dt.timedelta(hours=1), "hour", {"minute": 0, "second": 0}),
                (dt.timedelta(minutes=1), "minute", {"second": 0}),
                (dt.timedelta(seconds=1), "second", {}),
            ):
                allowed = getattr(self, attribute + "s")
                while getattr(t, attribute) not in allowed:
                    if not added:
                        added = True
                        t = t.replace(**finer)
                    t = t + unit
                    if getattr(t, attribute) == 0:
                        wrapped = True
                        break
                if wrapped:
                    break
            if wrapped:
                continue
            return t.timestamp()


Schedule = EverySchedule | CronSchedule

_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}
_MONTHS = {name: i + 1 for i, name in enumerate(calendar.month_abbr[1:])}
_WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


def _field(text: str, low: int, high: int, names: dict[str, int]) -> tuple[frozenset[int], bool]:
    values: set[int] = set()
    star = False

    def number(token: str) -> int:
        lowered = token.lower()
        if lowered in names:
            return names[lowered]
        if not token.isdigit():
            raise ScheduleError(f"failed to parse int from {token}")
        return int(token)

    for part in text.split(","):
        range_part, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ScheduleError(f"invalid step in {part}")
            step = int(step_text)
        if range_part in ("*", "?"):
            start, end = low, high
            star = star or not step_text
        elif "-" in range_part:
            first, _, last = range_part.partition("-")
            start, end = number(first), number(last)
        else:
            start = number(range_part)
            end = high if step_text else start
        if start < low or end > high or start > end:
            raise ScheduleError(f"out of range ({low}-{high}): {part}")
        values.update(range(start, end + 1, step))
    return frozenset(values), star


def parse_schedule(spec: str) -> Schedule:
    """Parse a job schedule as dapr/kit's cron parser (seconds field, descriptors)."""
    text = spec.strip()
    if text.startswith("@every "):
        delay = parse_go_duration(text[len("@every ") :].strip())
        # dapr/kit cron.Every: below a millisecond rounds up; sub-millisecond parts drop.
        delay = max(delay, 0.001)
        return EverySchedule(math.floor(delay * 1000) / 1000)
    if text.startswith("@"):
        if text not in _DESCRIPTORS:
            raise ScheduleError(f"unrecognized descriptor: {text}")
        text = _DESCRIPTORS[text]
    fields = text.split()
    if len(fields) != 6:
        raise ScheduleError(f"expected exactly 6 fields, found {len(fields)}: {spec}")
    months = {k.lower(): v for k, v in _MONTHS.items()}
    seconds, _ = _field(fields[0], 0, 59, {})
    minutes, _ = _field(fields[1], 0, 59, {})
    hours, _ = _field(fields[2], 0, 23, {})
    days, days_star = _field(fields[3], 1, 31, {})
    month_set, _ = _field(fields[4], 1, 12, months)
    weekdays, weekdays_star = _field(fields[5], 0, 7, _WEEKDAYS)
    if 7 in weekdays:
        weekdays = (weekdays - {7}) | {0}
    return CronSchedule(
        seconds, minutes, hours, days, month_set, weekdays, days_star, weekdays_star
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTimes:
    """What ``Builder.Parse`` stores for a job: its schedule and time anchors."""

    schedule: Schedule | None
    repeats: int | None
    start: float | None  # creation time, when there is no due time (does not fire)
    due: float | None  # first firing time, when there is a due time
    expiration: float | None

    def next(self, count: int, last: float | None) -> float | None:
        """``Next(count, last)`` of the oneshot / repeats schedulers."""
        if self.schedule is None:
            return None if count >= 1 else self.due
        if self.repeats is not None and count >= self.repeats:
            return None
        if last is None:
            if self.due is not None:
                return self.due
            assert self.start is not None
            return self.schedule.next(self.start)
        following = self.schedule.next(last)
        if self.expiration is not None and following > self.expiration:
            return None
        return following

    def first(self, count: int, last: float | None) -> float | None:
        """``updateNext``: the next firing time, or None when the job is finished."""
        if self.repeats is not None and count >= self.repeats:
            return None
        following = self.next(count, last)
        if following is None:
            return None
        if self.expiration is not None and following > self.expiration:
            return None
        return following


def parse_job_times(
    *,
    schedule: str | None,
    due_time: str | None,
    ttl: str | None,
    repeats: int | None,
    now: float,
) -> JobTimes:
    """``Builder.Parse`` validation and anchors; raises :class:`ScheduleError` with the
    Scheduler's own messages."""
    if due_time is None and schedule is None:
        raise ScheduleError("job must have either a due time or a schedule")
    if schedule is None and repeats is not None and repeats > 1:
        raise ScheduleError("job must have a schedule to repeat")
    if repeats is not None and repeats < 1:
        raise ScheduleError("defined repeats must be greater than 0")
    if schedule is None and ttl is not None:
        raise ScheduleError("job must have a schedule to have a ttl")
    parsed = parse_schedule(schedule) if schedule is not None else None
    due = parse_point_in_time(due_time, now) if due_time is not None else None
    expiration = None
    if ttl is not None:
        try:
            expiration = parse_point_in_time(ttl, due if due is not None else now)
        except ScheduleError as exc:
            raise ScheduleError("ttl format not recognized") from exc
        if due is not None and due > expiration:
            raise ScheduleError("ttl must be greater than due time")
    return JobTimes(
        schedule=parsed,
        repeats=repeats,
        start=None if due is not None else now,
        due=due,
        expiration=expiration,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FailurePolicy:
    """``constant`` (retry every ``interval``, at most ``max_retries`` times; None means
    forever) or ``drop``. Jobs without one get constant(1s, 3), set at scheduling time."""

    drop: bool = False
    interval: float = 0.0
    max_retries: int | None = None


DEFAULT_FAILURE_POLICY = FailurePolicy(interval=1.0, max_retries=3)


@dataclass(frozen=True, slots=True, kw_only=True)
class Counter:
    """The Scheduler's per-job counter: ticks done, failed attempts at the current tick,
    the last tick's *scheduled* time, and when to fire next."""

    count: int = 0
    attempts: int = 0
    last: float | None = None
    next_at: float = 0.0


def start_counter(times: JobTimes) -> Counter | None:
    """The counter of a new (or overwritten) job; None if it will never fire."""
    first = times.first(0, None)
    return None if first is None else Counter(next_at=first)


def advance(
    times: JobTimes, policy: FailurePolicy, counter: Counter, *, success: bool
) -> Counter | None:
    """``TriggerSuccess`` / ``TriggerFailed`` of go-etcd-cron ``internal/counter``.

    Returns the new counter, or None when the job is finished and must be deleted."""
    count, attempts, last, next_at = counter.count, counter.attempts, counter.last, counter.next_at
    if not success:
        attempts += 1
        if policy.drop:
            last = next_at
        else:
            try_again = policy.max_retries is None or policy.max_retries >= attempts
            if try_again:
                return Counter(
                    count=count, attempts=attempts, last=last, next_at=next_at + policy.interval
                )
            scheduled = times.next(count, last)
            if scheduled is not None:
                last = scheduled
        count, attempts = count + 1, 0
    else:
        scheduled = times.next(count, last)
        if scheduled is not None:
            last = scheduled
        count, attempts = count + 1, 0
    following = times.first(count, last)
    if following is None:
        return None
    return Counter(count=count, attempts=attempts, last=last, next_at=following)
