"""`fhir-server terminology import --format snomed`: an RF2 snapshot the test writes in
the release format (tab-separated, header rows, the RF2 file names), imported, killed
half-way and resumed, re-run, and then used over HTTP ($lookup with Spanish
designations, $subsumes over the transitive closure, $expand with is-a)."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pymongo import MongoClient
from terminology_helpers import codes, get, parts, post, value_set, values

from fhir_server.cli import main
from fhir_server.config import Settings

SCT = "http://snomed.info/sct"
CORE = "900000000000207008"
DATE = "20250131"
CONCEPTS = {  # id: (active, parents, FSN, preferred synonym, Spanish synonym)
    "138875005": ("1", [], "SNOMED CT Concept (SNOMED RT+CTV3)", "SNOMED CT Concept", None),
    "404684003": (
        "1",
        ["138875005"],
        "Clinical finding (finding)",
        "Clinical finding",
        "hallazgo clínico",
    ),
    "64572001": ("1", ["404684003"], "Disease (disorder)", "Disease", "enfermedad"),
    "73211009": (
        "1",
        ["64572001"],
        "Diabetes mellitus (disorder)",
        "Diabetes mellitus",
        "diabetes mellitus",
    ),
    "46635009": (
        "1",
        ["73211009"],
        "Diabetes mellitus type 1 (disorder)",
        "Type 1 diabetes mellitus",
        "diabetes mellitus tipo 1",
    ),
    "44054006": (
        "1",
        ["73211009"],
        "Diabetes mellitus type 2 (disorder)",
        "Type 2 diabetes mellitus",
        "diabetes mellitus tipo 2",
    ),
    "38341003": (
        "1",
        ["64572001"],
        "Hypertensive disorder, systemic arterial (disorder)",
        "Hypertensive disorder",
        "hipertensión arterial",
    ),
    "190329007": (
        "0",
        [],
        "Diabetes mellitus, adult onset, with no mention of complication (disorder)",
        "Adult onset diabetes",
        None,
    ),
}


def write_rf2(root: Path) -> Path:
    snap = root / "SnomedCT_Release" / "Snapshot" / "Terminology"
    snap.mkdir(parents=True)
    refsets = root / "SnomedCT_Release" / "Snapshot" / "Refset" / "Language"
    refsets.mkdir(parents=True)

    def tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
        lines = ["\t".join(header)] + ["\t".join(r) for r in rows]
        path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")

    tsv(
        snap / f"sct2_Concept_Snapshot_INT_{DATE}.txt",
        ["id", "effectiveTime", "active", "moduleId", "definitionStatusId"],
        [[cid, DATE, a, CORE, "900000000000074008"] for cid, (a, *_) in CONCEPTS.items()],
    )
    header = [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "conceptId",
        "languageCode",
        "typeId",
        "term",
        "caseSignificanceId",
    ]
    en, es, lang_en, lang_es = [], [], [], []
    for n, (cid, (_, _, fsn, pt, spanish)) in enumerate(CONCEPTS.items()):
        en.append(
            [
                f"{n}1011",
                DATE,
                "1",
                CORE,
                cid,
                "en",
                "900000000000003001",
                fsn,
                "900000000000448009",
            ]
        )
        en.append(
            [f"{n}2011", DATE, "1", CORE, cid, "en", "900000000000013009", pt, "900000000000448009"]
        )
        en.append(
            [
                f"{n}3011",
                DATE,
                "0",
                CORE,
                cid,
                "en",
                "900000000000013009",
                "retired term",
                "900000000000448009",
            ]
        )
        lang_en.append(
            [f"u{n}", DATE, "1", CORE, "900000000000509007", f"{n}2011", "900000000000548007"]
        )
        if spanish:
            es.append(
                [
                    f"{n}4011",
                    DATE,
                    "1",
                    "450829007",
                    cid,
                    "es",
                    "900000000000013009",
                    spanish,
                    "900000000000448009",
                ]
            )
            lang_es.append(
                [f"e{n}", DATE, "1", "450829007", "450828004", f"{n}4011", "900000000000548007"]
            )
    tsv(snap / f"sct2_Description_Snapshot-en_INT_{DATE}.txt", header, en)
    tsv(snap / f"sct2_Description_SpanishExtensionSnapshot-es_INT_{DATE}.txt", header, es)
    lang_header = [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "refsetId",
        "referencedComponentId",
        "acceptabilityId",
    ]
    tsv(refsets / f"der2_cRefset_LanguageSnapshot-en_INT_{DATE}.txt", lang_header, lang_en)
    tsv(
        refsets / f"der2_cRefset_LanguageSpanishExtensionSnapshot-es_INT_{DATE}.txt",
        lang_header,
        lang_es,
    )
    rel_header = [
        "id",
        "effectiveTime",
        "active",
        "moduleId",
        "sourceId",
        "destinationId",
        "relationshipGroup",
        "typeId",
        "characteristicTypeId",
        "modifierId",
    ]
    rels = []
    for n, (cid, (_, parents, *_)) in enumerate(CONCEPTS.items()):
        for p in parents:
            rels.append(
                [
                    f"{n}5021",
                    DATE,
                    "1",
                    CORE,
                    cid,
                    p,
                    "0",
                    "116680003",
                    "900000000000011006",
                    "900000000000451002",
                ]
            )
    # an inactive is-a and a finding-site attribute: neither is hierarchy
    rels.append(
        [
            "9995021",
            DATE,
            "0",
            CORE,
            "38341003",
            "73211009",
            "0",
            "116680003",
            "900000000000011006",
            "900000000000451002",
        ]
    )
    rels.append(
        [
            "9996021",
            DATE,
            "1",
            CORE,
            "73211009",
            "113331007",
            "1",
            "363698007",
            "900000000000011006",
            "900000000000451002",
        ]
    )
    tsv(snap / f"sct2_Relationship_Snapshot_INT_{DATE}.txt", rel_header, rels)
    # stated relationships are not read: this one would make hypertension a diabetes
    tsv(
        snap / f"sct2_StatedRelationship_Snapshot_INT_{DATE}.txt",
        rel_header,
        [
            [
                "9997021",
                DATE,
                "1",
                CORE,
                "38341003",
                "73211009",
                "0",
                "116680003",
                "900000000000010007",
                "900000000000451002",
            ]
        ],
    )
    return root


def run_import(settings: Settings, path: Path, *extra: str) -> tuple[int, str]:
    args = ["terminology", "import", "--format", "snomed", str(path), "--no-progress"]
    args += ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    result = CliRunner().invoke(main, [*args, "--batch-size", "3", *extra])
    return result.exit_code, result.output


def test_snomed_import_killed_resumed_rerun_and_used(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    release = write_rf2(tmp_path)
    # the core content has a SNOMED CT CodeSystem stub (content not-present, no version)
    core = ["terminology", "load-core", "--mongo-url", settings.mongo_url or ""]
    assert CliRunner().invoke(main, [*core, "--database", settings.database]).exit_code == 0
    stub = get(client, "CodeSystem/$lookup", system=SCT, code="44054006")
    assert (
        stub.status_code == 404 and "not on this server" in stub.json()["issue"][0]["diagnostics"]
    )
    assert SCT not in held(client)  # the stub is not a code system the server holds
    # killed after the first of three batches of concepts
    code, output = run_import(settings, release, "--stop-after-batches", "1")
    assert code == 3 and "run the command again to resume" in output
    code, output = run_import(settings, release)
    assert code == 0, output
    assert f"imported {SCT} version {SCT}/{CORE}/version/{DATE}: 8 concepts" in output
    assert "resumed after 1 batches" in output
    code, output = run_import(settings, release)
    assert code == 0 and "already imported" in output

    assert held(client)[SCT] == [f"{SCT}/{CORE}/version/{DATE}"]
    found = get(client, "CodeSystem", url=SCT, version=f"{SCT}/{CORE}/version/{DATE}").json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["content"] == "not-present"  # concepts in the store

    lookup = get(client, "CodeSystem/$lookup", system=SCT, code="44054006").json()
    assert values(lookup)["display"] == "Type 2 diabetes mellitus"  # preferred synonym
    designations = {(d.get("language"), d["value"]) for d in parts(lookup, "designation")}
    assert ("es", "diabetes mellitus tipo 2") in designations
    assert ("en", "Diabetes mellitus type 2 (disorder)") in designations
    assert ("en", "retired term") not in designations  # inactive description
    spanish = get(client, "CodeSystem/$lookup", system=SCT, code="44054006", displayLanguage="es")
    assert values(spanish.json())["display"] == "diabetes mellitus tipo 2"

    def subsumes(a: str, b: str) -> str:
        r = get(client, "CodeSystem/$subsumes", system=SCT, codeA=a, codeB=b)
        return str(values(r.json())["outcome"])

    assert subsumes("404684003", "44054006") == "subsumes"  # transitive
    assert subsumes("73211009", "38341003") == "not-subsumed"  # inactive and stated is-a ignored

    vs = value_set(
        "http://example.org/vs/dm",
        {"system": SCT, "filter": [{"property": "concept", "op": "is-a", "value": "73211009"}]},
    )
    expanded = post(
        client,
        "ValueSet/$expand",
        {"name": "valueSet", "resource": vs},
        {"name": "displayLanguage", "valueCode": "es"},
    )
    assert sorted(codes(expanded.json())) == ["44054006", "46635009", "73211009"]
    assert {c["display"] for c in expanded.json()["expansion"]["contains"]} >= {
        "diabetes mellitus tipo 1"
    }

    fsn = f"{SCT}|900000000000003001"  # designations of one use: the FSNs
    named = post(
        client,
        "ValueSet/$expand",
        {"name": "valueSet", "resource": vs},
        {"name": "designation", "valueString": fsn},
    ).json()
    dm2 = next(c for c in named["expansion"]["contains"] if c["code"] == "44054006")
    assert [d["value"] for d in dm2["designation"]] == ["Diabetes mellitus type 2 (disorder)"]

    inactive = get(client, "CodeSystem/$validate-code", url=SCT, code="190329007").json()
    assert values(inactive)["inactive"] is True


def held(client: TestClient) -> dict[str, list[str]]:
    """The code systems GET /metadata?mode=terminology lists, with their versions."""
    statement = get(client, "metadata", mode="terminology").json()
    return {cs["uri"]: [v.get("code") for v in cs["version"]] for cs in statement["codeSystem"]}


def test_import_of_a_folder_without_rf2_is_a_usage_error(
    settings: Settings, tmp_path: Path
) -> None:
    code, output = run_import(settings, tmp_path)
    assert code == 2 and "sct2_Concept" in output


# --- LOINC ---------------------------------------------------------------------------------

LOINC = "http://loinc.org"
LOINC_HEADER = [
    "LOINC_NUM", "COMPONENT", "PROPERTY", "TIME_ASPCT", "SYSTEM", "SCALE_TYP", "METHOD_TYP",
    "CLASS", "VersionLastChanged", "CHNG_TYPE", "DefinitionDescription", "STATUS",
    "CONSUMER_NAME", "CLASSTYPE", "FORMULA", "EXMPL_ANSWERS", "SURVEY_QUEST_TEXT",
    "SURVEY_QUEST_SRC", "UNITSREQUIRED", "RELATEDNAMES2", "SHORTNAME", "ORDER_OBS",
    "HL7_FIELD_SUBFIELD_ID", "EXTERNAL_COPYRIGHT_NOTICE", "EXAMPLE_UNITS", "LONG_COMMON_NAME",
    "EXAMPLE_UCUM_UNITS", "STATUS_REASON", "STATUS_TEXT", "CHANGE_REASON_PUBLIC",
    "COMMON_TEST_RANK", "COMMON_ORDER_RANK", "HL7_ATTACHMENT_STRUCTURE",
    "EXTERNAL_COPYRIGHT_LINK", "PanelType", "AskAtOrderEntry", "AssociatedObservations",
    "VersionFirstReleased", "ValidHL7AttachmentRequest", "DisplayName",
]  # fmt: skip
LOINC_ROWS = [  # code, component, property, system, scale, status, short name, long name
    (
        "2339-0",
        "Glucose",
        "MCnc",
        "Bld",
        "Qn",
        "ACTIVE",
        "Glucose Bld-mCnc",
        "Glucose [Mass/volume] in Blood",
    ),
    (
        "2345-7",
        "Glucose",
        "MCnc",
        "Ser/Plas",
        "Qn",
        "ACTIVE",
        "Glucose SerPl-mCnc",
        "Glucose [Mass/volume] in Serum or Plasma",
    ),
    (
        "4548-4",
        "Hemoglobin A1c/Hemoglobin.total",
        "MFr",
        "Bld",
        "Qn",
        "ACTIVE",
        "Hgb A1c MFr Bld",
        "Hemoglobin A1c/Hemoglobin.total in Blood",
    ),
    (
        "1558-6",
        "Glucose^post CFst",
        "MCnc",
        "Ser/Plas",
        "Qn",
        "DEPRECATED",
        "Glucose p fast SerPl-mCnc",
        "Fasting glucose [Mass/volume] in Serum or Plasma",
    ),
]


def write_loinc(root: Path) -> Path:
    import csv

    folder = root / "Loinc_2.77"
    (folder / "LoincTable").mkdir(parents=True)
    with (folder / "LoincTable" / "Loinc.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        out.writerow(LOINC_HEADER)
        for code, comp, prop, system, scale, status, short, long in LOINC_ROWS:
            row = dict.fromkeys(LOINC_HEADER, "")
            row.update(
                LOINC_NUM=code, COMPONENT=comp, PROPERTY=prop, TIME_ASPCT="Pt", SYSTEM=system,
                SCALE_TYP=scale, CLASS="CHEM", STATUS=status, CLASSTYPE="1", SHORTNAME=short,
                LONG_COMMON_NAME=long, ORDER_OBS="Both",
            )  # fmt: skip
            out.writerow(row.values())
    hierarchy = folder / "AccessoryFiles" / "ComponentHierarchyBySystem"
    hierarchy.mkdir(parents=True)
    with (hierarchy / "ComponentHierarchyBySystem.csv").open(
        "w", newline="", encoding="utf-8"
    ) as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        out.writerow(["PATH_TO_ROOT", "SEQUENCE", "IMMEDIATE_PARENT", "CODE", "CODE_TEXT"])
        out.writerow(["", "1", "", "LP432695-7", "{component}"])
        out.writerow(["LP432695-7", "1", "LP432695-7", "LP29693-6", "Chemistry"])
        out.writerow(["LP432695-7.LP29693-6", "1", "LP29693-6", "LP14635-4", "Glucose"])
        for code in ("2339-0", "2345-7"):
            out.writerow(["LP432695-7.LP29693-6.LP14635-4", "1", "LP14635-4", code, "Glucose"])
        out.writerow(["LP432695-7.LP29693-6", "2", "LP29693-6", "4548-4", "HbA1c"])
    variants = folder / "AccessoryFiles" / "LinguisticVariants"
    variants.mkdir(parents=True)
    with (variants / "esMX12LinguisticVariant.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        out.writerow(
            [
                "LOINC_NUM",
                "COMPONENT",
                "PROPERTY",
                "TIME_ASPCT",
                "SYSTEM",
                "SCALE_TYP",
                "METHOD_TYP",
                "CLASS",
                "SHORTNAME",
                "LONG_COMMON_NAME",
            ]
        )
        out.writerow(
            [
                "2339-0",
                "Glucosa",
                "MCnc",
                "Pt",
                "Sangre",
                "Qn",
                "",
                "QUIM",
                "",
                "Glucosa [Masa/volumen] en Sangre",
            ]
        )
    return folder


def test_loinc_import_with_hierarchy_and_spanish_variant(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    folder = write_loinc(tmp_path)
    args = ["terminology", "import", "--format", "loinc", str(folder), "--no-progress"]
    args += ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert f"imported {LOINC} version 2.77: 7 concepts" in first.output  # 4 terms + 3 parts
    assert "already imported" in CliRunner().invoke(main, args).output

    lookup = get(client, "CodeSystem/$lookup", system=LOINC, code="2339-0").json()
    assert values(lookup)["display"] == "Glucose [Mass/volume] in Blood"
    props = {(p["code"], p["value"]) for p in parts(lookup, "property")}
    assert {("COMPONENT", "Glucose"), ("SYSTEM", "Bld"), ("SCALE_TYP", "Qn")} <= props
    assert ("parent", "LP14635-4") in props
    spanish = get(client, "CodeSystem/$lookup", system=LOINC, code="2339-0", displayLanguage="es")
    assert values(spanish.json())["display"] == "Glucosa [Masa/volumen] en Sangre"
    subsumes = get(client, "CodeSystem/$subsumes", system=LOINC, codeA="LP29693-6", codeB="2345-7")
    assert values(subsumes.json())["outcome"] == "subsumes"
    deprecated = get(client, "CodeSystem/$validate-code", url=LOINC, code="1558-6").json()
    assert values(deprecated)["inactive"] is True
    # the LOINC axes are filterable properties
    vs = value_set(
        "http://example.org/vs/glucose",
        {"system": LOINC, "filter": [{"property": "COMPONENT", "op": "=", "value": "Glucose"}]},
    )
    expanded = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": vs})
    assert codes(expanded.json()) == ["2339-0", "2345-7"]


# --- ICD-10 / CIE-10 -----------------------------------------------------------------------

ICD10 = "http://hl7.org/fhir/sid/icd-10"
CLAML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE ClaML SYSTEM "ClaML.dtd">
<ClaML version="2.0.0">
  <Meta name="lang" value="es"/>
  <Identifier authority="OPS" uid="cie-10-es"/>
  <Title name="CIE-10" version="2018" date="2018-01-01">Clasificación Internacional de Enfermedades</Title>
  <ClassKinds><ClassKind name="chapter"/><ClassKind name="block"/><ClassKind name="category"/></ClassKinds>
  <RubricKinds><RubricKind name="preferred" inclusive="true"/><RubricKind name="inclusion"/></RubricKinds>
  <Class code="IV" kind="chapter">
    <SubClass code="E10-E14"/>
    <Rubric kind="preferred"><Label xml:lang="es">Enfermedades endocrinas, nutricionales y metabólicas</Label></Rubric>
  </Class>
  <Class code="E10-E14" kind="block">
    <SuperClass code="IV"/><SubClass code="E11"/>
    <Rubric kind="preferred"><Label xml:lang="es">Diabetes mellitus</Label></Rubric>
  </Class>
  <Class code="E11" kind="category">
    <SuperClass code="E10-E14"/><SubClass code="E11.9"/>
    <Rubric kind="preferred"><Label xml:lang="es">Diabetes mellitus <Reference>tipo 2</Reference></Label></Rubric>
    <Rubric kind="inclusion"><Label xml:lang="es">Diabetes del adulto</Label></Rubric>
  </Class>
  <Class code="E11.9" kind="category">
    <SuperClass code="E11"/>
    <Rubric kind="preferred"><Label xml:lang="es">Diabetes mellitus tipo 2, sin mención de complicación</Label></Rubric>
  </Class>
</ClaML>
"""  # noqa: E501


def test_cie10_claml_import(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "cie10.xml").write_text(CLAML, encoding="utf-8")
    args = ["terminology", "import", "--format", "icd10", str(tmp_path / "cie10.xml")]
    args += [
        "--no-progress",
        "--mongo-url",
        settings.mongo_url or "",
        "--database",
        settings.database,
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert f"imported {ICD10} version 2018: 4 concepts" in first.output
    assert "already imported" in CliRunner().invoke(main, args).output
    lookup = get(client, "CodeSystem/$lookup", system=ICD10, code="E11").json()
    assert values(lookup)["display"] == "Diabetes mellitus tipo 2"  # mixed content joined
    assert parts(lookup, "designation") == [{"language": "es", "value": "Diabetes mellitus tipo 2"}]
    subsumes = get(client, "CodeSystem/$subsumes", system=ICD10, codeA="IV", codeB="E11.9")
    assert values(subsumes.json())["outcome"] == "subsumes"
    vs = value_set(
        "http://example.org/vs/e11",
        {
            "system": ICD10,
            "filter": [{"property": "concept", "op": "descendent-of", "value": "E10-E14"}],
        },
    )
    expanded = post(client, "ValueSet/$expand", {"name": "valueSet", "resource": vs})
    assert codes(expanded.json()) == ["E11", "E11.9"]


def test_icd10_tabular_csv_import(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    table = tmp_path / "icd10.csv"
    table.write_text(
        "code,description\nE11,Type 2 diabetes mellitus\n"
        'E11.9,"Type 2 diabetes mellitus, without complications"\nI10,Essential hypertension\n',
        encoding="utf-8",
    )
    args = ["terminology", "import", "--format", "icd10", str(table), "--version", "2019"]
    args += [
        "--no-progress",
        "--mongo-url",
        settings.mongo_url or "",
        "--database",
        settings.database,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lookup = get(client, "CodeSystem/$lookup", system=ICD10, code="E11.9").json()
    assert values(lookup)["display"] == "Type 2 diabetes mellitus, without complications"
    assert ("parent", "E11") in {(p["code"], p["value"]) for p in parts(lookup, "property")}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.xml").write_text("<html/>", encoding="utf-8")
    args[4] = str(bad)
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 2 and "not ClaML" in refused.output


# --- a real kill -----------------------------------------------------------------------------


def write_big_rf2(root: Path, n: int) -> Path:
    """n concepts in a ternary is-a tree, one English FSN each: enough batches to kill."""
    root.mkdir()
    concepts = ["id\teffectiveTime\tactive\tmoduleId\tdefinitionStatusId"]
    descriptions = [
        "id\teffectiveTime\tactive\tmoduleId\tconceptId\tlanguageCode\ttypeId\tterm\tcaseSignificanceId"
    ]
    relationships = [
        "id\teffectiveTime\tactive\tmoduleId\tsourceId\tdestinationId\trelationshipGroup\ttypeId"
        "\tcharacteristicTypeId\tmodifierId"
    ]
    for i in range(n):
        cid = f"{1000000 + i}00"
        concepts.append(f"{cid}\t{DATE}\t1\t{CORE}\t900000000000074008")
        descriptions.append(
            f"{i}1011\t{DATE}\t1\t{CORE}\t{cid}\ten\t900000000000003001\tConcept {i} (finding)"
            "\t900000000000448009"
        )
        if i:
            parent = f"{1000000 + (i - 1) // 3}00"
            relationships.append(
                f"{i}1021\t{DATE}\t1\t{CORE}\t{cid}\t{parent}\t0\t116680003"
                "\t900000000000011006\t900000000000451002"
            )
    for name, lines in (
        (f"sct2_Concept_Snapshot_INT_{DATE}.txt", concepts),
        (f"sct2_Description_Snapshot-en_INT_{DATE}.txt", descriptions),
        (f"sct2_Relationship_Snapshot_INT_{DATE}.txt", relationships),
    ):
        (root / name).write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    return root


def write_big_loinc(root: Path, n: int) -> Path:
    """A LOINC table of n terms, the release's own columns and quoting."""
    import csv

    folder = root / "Loinc_2.80"
    folder.mkdir(parents=True)
    with (folder / "Loinc.csv").open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f, quoting=csv.QUOTE_ALL)
        out.writerow(LOINC_HEADER)
        for i in range(n):
            row = dict.fromkeys(LOINC_HEADER, "")
            row.update(
                LOINC_NUM=f"{10000 + i}-{i % 10}", COMPONENT=f"Analyte {i}", PROPERTY="MCnc",
                TIME_ASPCT="Pt", SYSTEM="Bld", SCALE_TYP="Qn", CLASS="CHEM", STATUS="ACTIVE",
                LONG_COMMON_NAME=f"Analyte {i} [Mass/volume] in Blood",
            )  # fmt: skip
            out.writerow(row.values())
    return folder


def write_big_icd10(root: Path, n: int) -> Path:
    """A tabular ICD-10 file of n codes in a ternary tree (parent column)."""
    root.mkdir(parents=True)
    lines = ["code,display,parent"]
    for i in range(n):
        parent = f"X{(i - 1) // 3:05d}" if i else ""
        lines.append(f"X{i:05d},Condition {i},{parent}")
    path = root / "icd10.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


BIG = 30_000


def _check_snomed(client: TestClient) -> None:
    r = get(
        client,
        "CodeSystem/$subsumes",
        system=SCT,
        codeA="100000000",
        codeB=f"{1000000 + BIG - 1}00",
    )
    assert values(r.json())["outcome"] == "subsumes"


def _check_loinc(client: TestClient) -> None:
    last = f"{10000 + BIG - 1}-{(BIG - 1) % 10}"
    r = get(client, "CodeSystem/$lookup", system=LOINC, code=last)
    assert values(r.json())["display"] == f"Analyte {BIG - 1} [Mass/volume] in Blood"


def _check_icd10(client: TestClient) -> None:
    r = get(client, "CodeSystem/$subsumes", system=ICD10, codeA="X00000", codeB=f"X{BIG - 1:05d}")
    assert values(r.json())["outcome"] == "subsumes"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "write", "check"),
    [
        ("snomed", write_big_rf2, _check_snomed),
        ("loinc", write_big_loinc, _check_loinc),
        ("icd10", write_big_icd10, _check_icd10),
    ],
)
def test_import_killed_with_sigkill_resumes(
    client: TestClient,
    settings: Settings,
    tmp_path: Path,
    fmt: str,
    write: Any,
    check: Any,
) -> None:
    """The import process is SIGKILLed once it has written a few batches; started again
    it continues from the recorded batch and ends with every concept exactly once; a
    third run finds the release imported and changes nothing."""
    release = write(tmp_path / "release", BIG)
    command = [sys.executable, "-m", "fhir_server", "terminology", "import", "--format"]
    command += [fmt, str(release), "--no-progress", "--batch-size", "500"]
    if fmt == "icd10":
        command += ["--version", "2019"]
    command += ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    with MongoClient(settings.mongo_url) as mc:
        imports = mc[settings.database]["terminology_imports"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = imports.find_one() or {}
            if state.get("done", 0) >= 3:
                break
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
        killed_at = (imports.find_one() or {}).get("done", 0)
        assert 3 <= killed_at < BIG // 500  # killed part-way
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        assert f"resumed after {killed_at} batches" in resumed.stdout
        concepts = mc[settings.database]["terminology_concepts"]
        assert concepts.count_documents({}) == BIG
        again = subprocess.run(command, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0 and "already imported" in again.stdout
        assert concepts.count_documents({}) == BIG
    check(client)


# --- progress ------------------------------------------------------------------------------


def test_progress_lines_off_a_terminal(settings: Settings, tmp_path: Path) -> None:
    """Off a terminal (a log, CI) the progress is a line at each tenth of the batches."""
    release = write_rf2(tmp_path)
    args = ["terminology", "import", "--format", "snomed", str(release), "--progress"]
    args += ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    result = CliRunner().invoke(main, [*args, "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("importing:")]
    assert lines == [
        "importing: 1/3 batches (33%)",
        "importing: 2/3 batches (66%)",
        "importing: 3/3 batches (100%)",
    ]


def test_progress_bar_on_a_terminal(settings: Settings, tmp_path: Path) -> None:
    """On a terminal the import draws click's progress bar, ending at 100%."""
    release = write_rf2(tmp_path)
    command = [sys.executable, "-m", "fhir_server", "terminology", "import", "--format"]
    command += ["snomed", str(release), "--batch-size", "3"]
    command += ["--mongo-url", settings.mongo_url or "", "--database", settings.database]
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        out, _ = process.communicate(timeout=120)
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
    assert process.returncode == 0, drawn
    text = drawn.decode()
    assert "importing" in text and "100%" in text and "#" in text
    assert "8 concepts" in out.decode()
