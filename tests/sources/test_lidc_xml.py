"""LIDC reader XML: the real series' four reading sessions, and refusal of unsafe or foreign XML."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.sources.lidc_xml import LidcXmlError, parse_lidc_xml, parse_lidc_xml_bytes

LIDC = Path(__file__).resolve().parents[1] / "data" / "real" / "lidc"
STUDY = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


@pytest.fixture(scope="module")
def real_read():
    xml = LIDC / "LIDC-IDRI-0001" / STUDY / SERIES / "69.xml"
    if not xml.is_file():
        pytest.skip(f"real LIDC data not found at {LIDC}")
    return parse_lidc_xml(xml)


def test_real_header_and_sessions(real_read):
    assert real_read.series_uid == SERIES and real_read.study_uid == STUDY
    assert [s.reader_id for s in real_read.sessions] == ["540461523", "1428348137", "-750896469", "2103845659"]
    assert [len(s.nodules) for s in real_read.sessions] == [4, 1, 4, 4]
    assert [len(s.non_nodules) for s in real_read.sessions] == [4, 1, 8, 0]


def test_real_nodule_marks(real_read):
    large = [n for s in real_read.sessions for n in s.nodules if not n.is_small]
    assert [n.nodule_id for n in large] == ["Nodule 001", "IL057_127364", "MI014_12127", "0"]
    assert [n.malignancy for n in large] == [5, 5, 5, 4]
    assert [len(n.rois) for n in large] == [8, 7, 8, 9]
    first = large[0].rois[0]
    assert first.z_mm == -125.0 and first.inclusion
    assert first.sop_uid.endswith("110383487652933113465768208719")
    assert first.points.shape == (76, 2) and tuple(first.points[0]) == (312, 355)
    assert np.array_equal(first.points[0], first.points[-1])  # LIDC closes contours
    assert large[0].characteristics["subtlety"] == 5 and len(large[0].characteristics) == 9


def test_real_small_nodules_have_one_point_and_no_rating(real_read):
    small = [n for s in real_read.sessions for n in s.nodules if n.is_small]
    assert len(small) == 9
    assert all(n.malignancy is None and n.characteristics == {} for n in small)
    assert all(len(n.rois) == 1 and n.rois[0].points.shape == (1, 2) for n in small)
    assert sorted({n.rois[0].z_mm for n in small}) == [-175.0, -150.0]


def test_real_non_nodule(real_read):
    nn = real_read.sessions[1].non_nodules[0]
    assert (nn.nonnodule_id, nn.z_mm, nn.x, nn.y) == ("IL057_127367", -195.0, 408, 209)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE LidcReadMessage [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<LidcReadMessage xmlns="http://www.nih.gov"><readingSession><servicingRadiologistID>&lol3;</servicingRadiologistID>
</readingSession></LidcReadMessage>"""


def test_entity_declarations_are_refused(tmp_path):
    path = tmp_path / "evil.xml"
    path.write_bytes(BILLION_LAUGHS)
    with pytest.raises(LidcXmlError, match="DOCTYPE/ENTITY") as info:
        parse_lidc_xml(path)
    assert str(path) in str(info.value)


def test_external_doctype_is_refused():
    evil = b'<?xml version="1.0"?><!DOCTYPE x SYSTEM "file:///etc/passwd"><LidcReadMessage/>'
    with pytest.raises(LidcXmlError, match="DOCTYPE"):
        parse_lidc_xml_bytes(evil, "ext.xml")


def test_foreign_and_broken_xml_are_refused(tmp_path):
    path = tmp_path / "cxr.xml"
    path.write_bytes(b'<?xml version="1.0"?><IdriReadMessage xmlns="http://www.nih.gov"/>')
    with pytest.raises(LidcXmlError, match=r"cxr\.xml.*<IdriReadMessage>.*<LidcReadMessage>"):
        parse_lidc_xml(path)
    with pytest.raises(LidcXmlError, match="not well-formed"):
        parse_lidc_xml_bytes(b"<LidcReadMessage><readingSession>", "cut.xml")
    assert isinstance(LidcXmlError("x"), ValueError)


def test_no_namespace_hole_and_missing_reader_id():
    xml = b"""<LidcReadMessage><ResponseHeader><SeriesInstanceUid>1.2</SeriesInstanceUid></ResponseHeader>
    <readingSession><unblindedReadNodule><noduleID>n1</noduleID>
      <characteristics><malignancy>2</malignancy></characteristics>
      <roi><imageZposition>-10.0</imageZposition><imageSOP_UID>1.2.3</imageSOP_UID><inclusion>FALSE</inclusion>
        <edgeMap><xCoord>4</xCoord><yCoord>5</yCoord></edgeMap><edgeMap><xCoord>6</xCoord><yCoord>5</yCoord></edgeMap>
      </roi></unblindedReadNodule></readingSession></LidcReadMessage>"""
    read = parse_lidc_xml_bytes(xml)
    assert read.series_uid == "1.2" and read.study_uid is None
    session = read.sessions[0]
    assert session.reader_id == "reader0"
    roi = session.nodules[0].rois[0]
    assert session.nodules[0].malignancy == 2 and not roi.inclusion and roi.points.tolist() == [[4, 5], [6, 5]]
