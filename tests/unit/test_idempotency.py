"""A request id names one request: resent with the same case details and images it
gets the stored report; with anything else ALREADY_EXISTS (RequestConflict), never
another case's report. Also: one image counted once per case."""

from __future__ import annotations

import asyncio

import pytest

from marrowdx.domain.diagnosis import default_rules
from marrowdx.domain.report import CaseInfo
from marrowdx.domain.taxonomy import default_taxonomy
from marrowdx.imaging.decode import ImageError
from marrowdx.pipeline import ImageInput
from marrowdx.service import MarrowService, RequestConflict
from marrowdx.store.sqlite import ReportStore


@pytest.fixture()
def service(tmp_path):
    store = ReportStore(tmp_path / "r.sqlite3")
    # Only fingerprinting, lookup and save are exercised: no pipeline, no models.
    yield MarrowService(None, store, default_taxonomy(), default_rules(), frozenset(), versions=None, thresholds=None)
    store.close()


def images(*payloads: bytes, kind: str = "crops") -> list[ImageInput]:
    return [ImageInput(p, f"{i}.jpg", f"{kind}[{i}].data") for i, p in enumerate(payloads)]


async def submit(service, info: CaseInfo, payloads, owner="org-a", streamed=False, report_id="rpt_new"):
    """What the servicer does for one case, minus the models: fingerprint, look up, save."""
    session = service.open_case(info, streamed=streamed)
    if streamed:
        await service.find_previous(session, owner)
        for p in payloads:
            await service.admit(session, "crop", images(p))
    else:
        await service.admit(session, "crop", images(*payloads))
        previous = await service.find_previous(session, owner)
        if previous is not None:
            return previous.report_id
    report = type("R", (), {"report_id": report_id, "case": info, "created_at": "2026-01-01T00:00:00Z"})
    return (await service.save(session, report, b"payload-" + report_id.encode(), owner, "client")).report_id


def test_same_request_returns_the_first_report_and_other_content_is_a_conflict(service):
    info = CaseInfo(case_id="C1", request_id="req-1")

    async def run():
        assert await submit(service, info, [b"a", b"b"], report_id="rpt_1") == "rpt_1"
        assert await submit(service, info, [b"a", b"b"], report_id="rpt_2") == "rpt_1"  # a resubmission
        for other_info, payloads in ((info, [b"a", b"c"]),  # other images
                                     (info, [b"b", b"a"]),  # same images, other order
                                     (info, [b"a"]),  # fewer images
                                     (CaseInfo(case_id="C2", request_id="req-1"), [b"a", b"b"]),  # another case
                                     (CaseInfo(case_id="C1", request_id="req-1", specimen_type="peripheral_blood"),
                                      [b"a", b"b"])):
            with pytest.raises(RequestConflict, match="req-1"):
                await submit(service, other_info, payloads, report_id="rpt_x")
        # Another organisation's use of the same request id is its own request.
        assert await submit(service, CaseInfo(case_id="B", request_id="req-1"), [b"z"], owner="org-b",
                            report_id="rpt_b") == "rpt_b"

    asyncio.run(run())
    assert service.store.by_report_id("rpt_x", "org-a") is None


def test_a_stream_retry_may_stop_earlier_or_later_but_not_send_other_images(service):
    info = CaseInfo(case_id="S", request_id="req-s")

    async def run():
        assert await submit(service, info, [b"1", b"2", b"3"], streamed=True, report_id="rpt_s") == "rpt_s"
        assert await submit(service, info, [b"1", b"2", b"3", b"4"], streamed=True, report_id="rpt_t") == "rpt_s"
        assert await submit(service, info, [b"1", b"2"], streamed=True, report_id="rpt_u") == "rpt_s"
        with pytest.raises(RequestConflict):  # refused at the first image that differs, before the finish
            await submit(service, info, [b"1", b"9", b"3"], streamed=True, report_id="rpt_v")
        with pytest.raises(RequestConflict):
            await submit(service, CaseInfo(case_id="other", request_id="req-s"), [b"1"], streamed=True)

    asyncio.run(run())


def test_rows_saved_before_fingerprints_are_still_answered(service):
    service.store.save("rpt_old", "", "req-old", "2026-01-01T00:00:00Z", b"old", owner="org-a")
    assert asyncio.run(submit(service, CaseInfo(case_id="C", request_id="req-old"), [b"a"])) == "rpt_old"


def test_the_same_image_twice_in_a_case_is_refused_naming_both(service):
    async def run(streamed):
        session = service.open_case(CaseInfo(case_id="D"), streamed=streamed)
        await service.admit(session, "field", images(b"x", b"y", kind="fields"))
        with pytest.raises(ImageError, match=r"same image bytes as fields\[0\]") as err:
            await service.admit(session, "field", [ImageInput(b"x", "again.jpg", "fields[2].data")])
        assert err.value.field == "fields[2].data"

    asyncio.run(run(False))
    asyncio.run(run(True))
