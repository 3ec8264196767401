"""Loading tables: every format, and every file error named with file, line and column."""

import io
import re
import warnings
import zipfile

import numpy as np
import pytest
import torch
from conftest import Payload

import torchlr
from torchlr.cli import main
from torchlr.io import column_names, feature_columns, load_data


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the CLI writes TensorBoard runs under ./runs by default


def write(path, text):
    path.write_text(text)
    return path


@pytest.fixture
def table():
    """A small table with a known linear target, as float32 values."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=g)
    y = X @ torch.tensor([1.5, -2.0, 0.25]) + 3.0
    return X, y


def test_csv_loads_named_columns_as_float32(tmp_path):
    path = write(tmp_path / "t.csv", "a,b,y\n1,2.5,3\n-4,5e-1,6\n")
    data = load_data(path, target="y")
    assert data.feature_names == ["a", "b"] and data.target_name == "y"
    assert data.features.dtype == torch.float32 and data.target.shape == (2, 1)
    assert torch.equal(data.features, torch.tensor([[1.0, 2.5], [-4.0, 0.5]]))
    assert torch.equal(data.target, torch.tensor([[3.0], [6.0]]))


def test_csv_feature_selection_and_default_target(tmp_path):
    path = write(tmp_path / "t.csv", "a,b,c,y\n1,2,3,4\n5,6,7,9\n")
    assert load_data(path).target_name == "y"  # the last column by default
    data = load_data(path, target="a", features=["c", "b"])
    assert data.feature_names == ["c", "b"]
    assert torch.equal(data.features, torch.tensor([[3.0, 2.0], [7.0, 6.0]]))
    assert torch.equal(data.target, torch.tensor([[1.0], [5.0]]))


def test_text_in_columns_the_run_does_not_use_is_left_alone(tmp_path):
    # Cells a CSV number never holds (1_000, other scripts' digits) are refused in the
    # columns read; a column of names beside them is not read at all.
    path = write(tmp_path / "t.csv", "city,a,y\nZürich,1,2\nmy_town,3,5\n")
    data = load_data(path, target="y", features=["a"])
    assert torch.equal(data.features, torch.tensor([[1.0], [3.0]]))
    assert torch.equal(data.target, torch.tensor([[2.0], [5.0]]))


def test_csv_skips_blank_lines_and_reads_quoted_cells(tmp_path):
    path = write(tmp_path / "t.csv", '\n"a","y"\n\n"1",2\n \t\n3,"4"\n\n')
    data = load_data(path)
    assert torch.equal(data.features, torch.tensor([[1.0], [3.0]]))


def test_a_closed_quote_may_hold_line_breaks_and_lines_are_still_counted(tmp_path):
    # A note over two lines, in a column the run does not read, is valid CSV: it loads, and
    # the lines after it keep their numbers. Only a quote never closed (which takes in the
    # rest of the file) is refused, naming the line it opened on.
    body = 'a,y,note\n1,2,"one\ntwo"\n3,4,x\n5,{y},"last\nnote{end}\n'
    (tmp_path / "ok.csv").write_text(body.format(y=6, end='"'))
    data = load_data(tmp_path / "ok.csv", target="y", features=["a"])
    assert data.features.reshape(-1).tolist() == [1, 3, 5]
    assert data.target.reshape(-1).tolist() == [2, 4, 6]
    (tmp_path / "bad.csv").write_text(body.format(y="oops", end='"'))
    with pytest.raises(ValueError, match=r"bad.csv, line 5, column 'y': 'oops' is not a number"):
        load_data(tmp_path / "bad.csv", target="y", features=["a"])
    (tmp_path / "open.csv").write_text(body.format(y=6, end=""))
    with pytest.raises(ValueError, match=r"open.csv, line 5: a quoted field runs on past"):
        load_data(tmp_path / "open.csv", target="y", features=["a"])


def test_a_text_column_among_the_default_features_is_named_with_the_way_out(tmp_path):
    # An id column is a common first column: training on every other column failed with
    # "'h1' is not a number" and no word on how to leave it out.
    path = tmp_path / "ids.csv"
    path.write_text("id,a,y\nh1,1,2\nh2,2,3.5\nh3,4,4\n")
    way_out = "leave it out by naming the feature columns (features, or --features"
    with pytest.raises(ValueError, match=r"ids.csv, line 2, column 'id': 'h1' is not a "
                                         r"number; if the column holds text") as info:
        load_data(path, target="y")
    assert way_out in str(info.value)
    assert load_data(path, target="y", features=["a"]).features.reshape(-1).tolist() == [1, 2, 4]
    # Not where the user named the column, nor for the target, nor past the first row.
    for target, features in (("y", ["id", "a"]), ("id", None)):
        with pytest.raises(ValueError, match="'h1' is not a number$"):
            load_data(path, target=target, features=features)
    path.write_text("a,y\n1,2\n2,oops\n")
    with pytest.raises(ValueError, match="'oops' is not a number$"):
        load_data(path)


def test_quoted_cells_names_and_line_endings_keep_every_line_number(tmp_path):
    # Rows are checked to end on their own line: quotes, a BOM, CRLF and blank lines must
    # not set that check off, nor move the line an error names.
    from torchlr.io import row_location

    text = '\ufeff"a,b",y\r\n"1.5",2\r\n\r\n"2.5","3"\r\n4,"5"\r\n'
    path = tmp_path / "t.csv"
    path.write_bytes(text.encode("utf-8"))
    data = load_data(path)
    assert data.feature_names == ["a,b"]
    assert data.features.reshape(-1).tolist() == [1.5, 2.5, 4.0]
    assert [row_location(path, row) for row in range(3)] == [f"{path}, line {n}"
                                                           for n in (2, 4, 5)]
    path.write_bytes((text + '"6",x\r\n').encode("utf-8"))
    with pytest.raises(ValueError, match=r"t.csv, line 6, column 'y': 'x' is not a number"):
        load_data(path)


@pytest.mark.parametrize("empty_row", [",,", " , ,\t", '"","",""'])
def test_a_row_of_empty_cells_is_a_row_of_missing_values(tmp_path, empty_row):
    # Only a line without separators is blank: a row of empty cells, skipped, would drop a
    # row unseen (and shift every later prediction of `torchlr predict` up by one).
    path = write(tmp_path / "t.csv", f"a,b,y\n1,2,3\n\n{empty_row}\n2,3,5\n")
    with pytest.raises(ValueError, match=r"t.csv, line 4, column 'a': missing value"):
        load_data(path)


def test_rows_of_empty_cells_after_the_last_row_are_a_spreadsheets_unused_rows(tmp_path):
    # Spreadsheets export a table's unused rows as ",,": after the data they are no rows;
    # refusing them as missing values would refuse most exported files.
    path = write(tmp_path / "t.csv", "a,b,y\n1,2,3\n2,3,5\n,,\n , ,\n\n,,\n")
    data = load_data(path)
    assert data.features.tolist() == [[1.0, 2.0], [2.0, 3.0]]
    assert data.target.reshape(-1).tolist() == [3.0, 5.0]
    middle = write(tmp_path / "m.csv", "a,b,y\n1,2,3\n,,\n2,3,5\n,,\n")
    with pytest.raises(ValueError, match=r"m.csv, line 3, column 'a': missing value"):
        load_data(middle)


def test_binary_formats_agree_with_csv(tmp_path, table):
    X, y = table
    full = torch.cat([X, y[:, None]], 1)
    np.save(tmp_path / "t.npy", full.numpy())
    np.savez(tmp_path / "t.npz", X=X.numpy(), y=y.numpy())
    torch.save({"X": X, "y": y}, tmp_path / "t.pt")
    torch.save((X, y), tmp_path / "pair.pt")
    torch.save((X, y[:, None]), tmp_path / "pair_2d.pt")  # y as synthetic_data gives it
    torch.save(full, tmp_path / "bare.pt")  # one tensor: columns as in a .npy
    assert column_names(tmp_path / "t.npy") == ["x1", "x2", "x3", "x4"]
    assert column_names(tmp_path / "bare.pt") == ["x1", "x2", "x3", "x4"]
    assert column_names(tmp_path / "t.npz") == ["X1", "X2", "X3", "y"]
    assert column_names(tmp_path / "pair.pt") == ["x1", "x2", "x3", "y"]
    assert column_names(tmp_path / "pair_2d.pt") == ["x1", "x2", "x3", "y"]
    for name in ("t.npy", "t.npz", "t.pt", "pair.pt", "pair_2d.pt", "bare.pt"):
        data = load_data(tmp_path / name)  # the target is the last column or the array y
        assert torch.equal(data.features, X), name
        assert torch.equal(data.target, y[:, None]), name


def test_csv_fit_recovers_known_coefficients(tmp_path, table):
    X, y = table
    rows = "\n".join(",".join(repr(float(v)) for v in [*x, t]) for x, t in zip(X, y))
    path = write(tmp_path / "lin.csv", "u,v,w,target\n" + rows + "\n")
    data = load_data(path, target="target")
    result = torchlr.fit(data.features, data.target, lr=0.1, num_epochs=60, device="cpu")
    torch.testing.assert_close(result.w, torch.tensor([1.5, -2.0, 0.25]), atol=1e-3, rtol=0)
    assert result.b == pytest.approx(3.0, abs=1e-3)


# --- every file error: a ValueError naming file, line and column; exit 2 from the CLI ----

def npz(**arrays):
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def npy(array):
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def pt(content):
    out = io.BytesIO()
    torch.save(content, out)
    return out.getvalue()


def quantized(values):
    with warnings.catch_warnings():  # torch deprecates making them; files may still hold them
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(values, 0.1, 0, torch.quint8)


FOLDER = object()
ERRORS = [
    # (file name, content or None for a missing file, CLI extra args, pieces of the message)
    ("missing.csv", None, [], ["No such file", "missing.csv"]),
    ("empty.csv", "", [], ["empty.csv", "is empty"]),
    ("blank.csv", "\n\n", [], ["blank.csv", "is empty"]),
    ("header.csv", "a,b,y\n", [], ["header.csv", "header but no data rows"]),
    ("ragged.csv", "a,b,y\n1,2,3\n4,5\n", [], ["ragged.csv", "line 3", "expected 3", "found 2"]),
    ("text.csv", "a,b,y\n1,2,3\n4,abc,6\n", [], ["text.csv", "line 3", "column 'b'", "'abc'",
                                               "not a number"]),
    ("hole.csv", "a,b,y\n1,,3\n", [], ["hole.csv", "line 2", "column 'b'", "missing value"]),
    ("nan.csv", "a,b,y\n1,2,3\n1,NA,3\n", [], ["nan.csv", "line 3", "column 'b'", "missing"]),
    ("inf.csv", "a,b,y\n1,2,inf\n", [], ["inf.csv", "line 2", "column 'y'", "not a finite"]),
    ("huge.csv", "a,b,y\n1,2,3\n\n4,5e39,6\n", [], ["huge.csv", "line 4", "column 'b'", "5e+39",
                                                   "beyond the range of float32"]),
    ("target.csv", "a,b,y\n1,2,3\n", ["--target", "z"], ["Unknown target column 'z'",
                                                         "target.csv", "'a', 'b', 'y'"]),
    ("feature.csv", "a,b,y\n1,2,3\n", ["--features", "a,q"], ["Unknown feature column",
                                                              "'q'", "feature.csv"]),
    # Names that print alike (é composed against e + accent) or nearly: the likely one named.
    ("nfd.csv", "a,cafe\u0301\n1,2\n", ["--target", "caf\u00e9"],
     ["Unknown target column", r"(did you mean 'cafe\u0301' for 'caf\xe9', the same text "
                               "in another Unicode normalization?)"]),
    ("case.csv", "Area,b,y\n1,2,3\n", ["--features", "area,b"],
     ["Unknown feature column(s) 'area'", "(did you mean 'Area' for 'area'?)"]),
    ("space.csv", "a,b,y\n1,2,3\n", ["--target", "y "], ["(did you mean 'y' for 'y '?)"]),
    ("const.csv", "a,y\n1,2\n3,2\n", [], ["const.csv", "'y'", "constant", "2.0"]),
    ("under.csv", "a,y\n1,2\n1_000,3\n", [], ["under.csv", "line 3", "'1_000' is not a number"]),
    ("script.csv", "a,y\n\u0661\u0662,2\n", [], ["script.csv", "line 2", "is not a number"]),
    ("dup.csv", "a,a,y\n1,2,3\n", [], ["dup.csv", "repeats column 'a'"]),
    # No header: its first row would name the columns and be lost from the data.
    ("nohead.csv", "1,2.5,3\n4,5,9\n", [], ["nohead.csv, line 1: the first row holds only "
     "numbers ('1,2.5,3'), not the names of the columns; add a header row"]),
    ("nohead-repeats.csv", "\n1.5,1.5,-2e3\n4,5,9\n", [], ["line 2: the first row holds only "
     "numbers ('1.5,1.5,-2e3')"]),
    ("kind.txt", "a,y\n1,2\n", [], ["Unsupported file type '.txt'"]),
    ("folder.csv", FOLDER, [], ["Not a file", "folder.csv"]),
    ("alone.csv", "y\n1\n2\n", [], ["alone.csv has no feature column besides the target 'y'"]),
    ("semi.csv", "a;b;y\n1;2;3\n", [], ["semi.csv has no feature column", "reads as one "
                                          "column: torchlr reads comma-separated values"]),
    ("record.npz", npz(X=np.zeros(3, dtype=[("a", "f8")]), y=np.ones(3)), [],
     ["record.npz: array 'X' is a structured array (fields 'a')"]),
    ("record.npy", npy(np.zeros(3, dtype=[("a", "f8"), ("y", "f8")])), [],
     ["record.npy: array 'x' is a structured array (fields 'a', 'y')"]),
    ("unnamed.csv", "\na,,y\n1,2,3\n", [], ["unnamed.csv, line 2: column 2 of the header "
                                              "has no name"]),
    ("cells.csv", "a,b,y\n1,2,3\n , , \n2,3,5\n", [], ["cells.csv", "line 3", "column 'a'",
                                                      "missing value"]),
    ("collide.npz", npz(X=np.ones((3, 2)), X1=np.arange(3.0), y=np.arange(3.0)), [],
     ["collide.npz", "repeat column 'X1'", "both 'X' and 'X1'"]),
    ("collide.pt", pt({"a": torch.ones(3, 1), "a1": torch.ones(3), "y": torch.arange(3.0)}), [],
     ["collide.pt", "repeat column 'a1'", "both 'a' and 'a1'"]),
    ("sparse.pt", pt({"a": torch.arange(3.0).to_sparse(), "y": torch.arange(3.0)}), [],
     ["sparse.pt", "array 'a' is a sparse tensor", ".to_dense()"]),
    ("sparse2d.pt", pt(torch.ones(3, 2).to_sparse()), [],
     ["sparse2d.pt", "array 'x' is a sparse tensor"]),
    ("meta.pt", pt({"a": torch.ones(3, device="meta"), "y": torch.arange(3.0)}), [],
     ["meta.pt", "array 'a' is on the 'meta' device"]),
    ("quant.pt", pt({"a": quantized(torch.rand(3)), "y": torch.arange(3.0)}), [],
     ["quant.pt", "array 'a' is quantized"]),
    ("cube.npz", npz(X=np.zeros((4, 2, 2))), [], ["cube.npz", "array 'X' has shape (4, 2, 2)",
                                                   "expected 1-D columns or a 2-D table"]),
    ("none.npz", npz(), [], ["none.npz is empty: it holds no columns"]),
    # Not a zip: numpy read it as a pickle and advised allow_pickle, for bytes of noise.
    ("noise.npz", bytes(range(256)) * 2, [], ["noise.npz is not a valid .npz data file: not a "
                                              "zip archive of .npy arrays"]),
    ("flags.pt", pt({"a": torch.ones(3, dtype=torch.bool), "y": torch.ones(3)}), [],
     ["flags.pt", "column 'a'", "dtype torch.bool does not hold real numbers"]),
    ("text.pt", pt("a,y\n1,2\n"), [], ["text.pt holds a str; expected a tensor, a pair (X, y) "
                                       "or a dict of named tensors"]),
    ("triple.pt", pt((torch.ones(3, 2), torch.ones(3), torch.ones(3))), [],
     ["triple.pt holds a tuple; expected"]),
    ("listed.pt", pt({"x": torch.ones(3, 2), "y": [1.0, 2.0, 3.0]}), [],
     ["listed.pt: entry 'y' is a list, not an array"]),
    ("latin1.csv", b"a,y\n1,2\n" + "caf\u00e9,3\n".encode("latin-1"), [],
     ["latin1.csv, line 3: byte 0xe9 is not UTF-8 text", "save the file as UTF-8"]),
    ("latin1-head.csv", "caf\u00e9,y\n1,2\n".encode("latin-1"), [],
     ["latin1-head.csv, line 1: byte 0xe9 is not UTF-8 text"]),
    # The decoder reads ahead in chunks: its error comes lines before the byte, and its
    # position counts from the chunk.
    ("latin1-far.csv", b"a,y\n" + b"1,2\n" * 5000 + "caf\u00e9,3\n".encode("latin-1"), [],
     ["latin1-far.csv, line 5002: byte 0xe9 is not UTF-8 text"]),
    # An open quote takes in the rest of the file as one field: its row ended at the last
    # line, one field short, or with the rest of the file as one cell.
    ("unterm.csv", 'a,b,c\n1,"2,3\n' + "4,5,6\n" * 498, [],
     ["unterm.csv, line 2: a quoted field runs on past the end of its line (a quote never "
      "closed?)"]),
    ("unterm-last.csv", 'a,b,c\n1,2,3\n1,2,"3\n' + "4,5,6\n" * 9, [],
     ["unterm-last.csv, line 3: a quoted field runs on"]),
    ("unterm-long.csv", 'a,b,c\n\n1,"2,3\n' + "4,5,6\n" * 30000, [],  # past the field limit
     ["unterm-long.csv, line 3: a quoted field runs on"]),
    ("unterm-head.csv", 'a,"b,c\n1,2,3\n4,5,6\n', [],
     ["unterm-head.csv, line 1: a quoted field runs on"]),
    ("wide.csv", "a,y\n1,2\n" + "1" * 140000 + ",3\n", [],
     ["wide.csv, line 3: not readable as CSV (field larger than field limit"]),
]


def test_a_header_with_some_numbers_for_names_is_a_header(tmp_path):
    # Years as column names: a name that is a number is fine beside one that is not.
    path = write(tmp_path / "years.csv", "2019,2020,y\n1,2,3\n4,5,9\n")
    data = load_data(path)
    assert (data.feature_names, data.target_name) == (["2019", "2020"], "y")
    assert data.features.tolist() == [[1.0, 2.0], [4.0, 5.0]]
    assert data.target.reshape(-1).tolist() == [3.0, 9.0]


@pytest.mark.parametrize("header", ["0,1,2", "NaN,x,1_000"])
def test_pandas_unnamed_columns_or_a_non_number_make_a_header(tmp_path, header):
    # pandas writes 0,1,2 for a frame's unnamed columns; a cell torchlr does not read as a
    # number (1_000, a word) is a name.
    path = write(tmp_path / "named.csv", f"{header}\n1.5,2,3\n4,5,9\n")
    data = load_data(path)
    assert [*data.feature_names, data.target_name] == header.split(",")
    assert data.features.tolist() == [[1.5, 2.0], [4.0, 5.0]]
    assert data.target.reshape(-1).tolist() == [3.0, 9.0]


@pytest.mark.parametrize("first", ["1,2,3", "1990,2000,2010", "1.5,nan,2", "0,1,1", "1,0,2"])
def test_a_first_row_of_numbers_is_a_header_only_where_a_column_is_named_by_it(tmp_path, first):
    # Whole numbers are no proof of a header (counts, ids: the first row of data would be
    # lost as names); naming a column by one of them is, as is a model trained on them.
    path = write(tmp_path / "t.csv", f"{first}\n0,4,-8\n1,1,3\n")
    with pytest.raises(ValueError, match=r"t\.csv, line 1: the first row holds only numbers "
                       r".*\(such as x1,x2,y\); if that row is the header, name one of its "
                       r"columns as the target or a feature"):
        load_data(path)
    if len(set(first.split(","))) == 3:
        data = load_data(path, target=first.split(",")[0])
        assert [*data.feature_names, data.target_name] == [*first.split(",")[1:],
                                                           first.split(",")[0]]
        assert data.target.reshape(-1).tolist() == [0.0, 1.0]
        features = load_data(path, features=first.split(",")[1:2])
        assert features.feature_names == first.split(",")[1:2]


def test_a_models_number_names_find_its_columns(tmp_path):
    path = write(tmp_path / "new.csv", "400.5,500.5\n0.2,0.4\n")
    assert feature_columns(path, ["400.5", "500.5"], "conc") == ["400.5", "500.5"]
    headerless = write(tmp_path / "bare.csv", "0.2,0.4\n0.1,0.3\n")
    with pytest.raises(ValueError, match=r"bare\.csv, line 1: the first row holds only numbers "
                       r"\('0\.2,0\.4'\), not the names of the columns; add a header row "
                       r"that names them \('400\.5', '500\.5', 'conc'\)"):
        feature_columns(headerless, ["400.5", "500.5"], "conc")


def make(path, content):
    """A file of text or bytes, a folder, or nothing (None: a missing file)."""
    if content is FOLDER:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)


@pytest.mark.parametrize("name,content,extra,pieces", ERRORS, ids=[e[0] for e in ERRORS])
def test_file_errors_in_the_api(tmp_path, name, content, extra, pieces):
    path = tmp_path / name
    make(path, content)
    target = extra[1] if extra[:1] == ["--target"] else None
    features = extra[1].split(",") if extra[:1] == ["--features"] else None
    with pytest.raises(ValueError) as info:
        load_data(path, target=target, features=features)
    message = str(info.value)
    assert "\n" not in message
    for piece in pieces:
        assert piece in message


# The CLI strips --target as the header's names are stripped: 'y ' names y there.
CLI_ERRORS = [e for e in ERRORS if e[0] != "space.csv"]


@pytest.mark.parametrize("name,content,extra,pieces", CLI_ERRORS, ids=[e[0] for e in CLI_ERRORS])
def test_file_errors_in_the_cli_exit_2_and_write_nothing(tmp_path, capsys, name, content,
                                                         extra, pieces):
    path = tmp_path / name
    make(path, content)
    save = tmp_path / "model.pt"
    code = main(["train", "--data", str(path), "--device", "cpu", "--save", str(save), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("torchlr: error: ")
    assert pieces[0] in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ([name] if content is not None else [])


def test_binary_file_errors(tmp_path):
    bad = np.ones((3, 2))
    bad[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(ValueError, match=r"nan.npy, row 2, column 'x1': missing value"):
        load_data(tmp_path / "nan.npy")
    huge = np.ones((3, 2))
    huge[1, 1] = -1e39  # finite in float64, inf once cast to float32
    np.save(tmp_path / "huge.npy", huge)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning would be a second line
        with pytest.raises(ValueError, match=r"huge.npy, row 2, column 'x2': -1e\+39 is beyond"):
            load_data(tmp_path / "huge.npy")
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(ValueError, match=r"text.npy, column 'x1': dtype <U1 does not hold real"):
        load_data(tmp_path / "text.npy")
    # numpy counts timedelta64 an integer: durations are not the numbers to regress on.
    np.save(tmp_path / "td.npy", np.arange(6).astype("m8[s]").reshape(3, 2))
    with pytest.raises(ValueError, match=r"td.npy, column 'x1': dtype timedelta64\[s\] does"):
        load_data(tmp_path / "td.npy")
    from torchlr.stream import BlockStream
    with pytest.raises(ValueError, match=r"td.npy: streaming needs a C-ordered real array"):
        BlockStream(tmp_path / "td.npy")
    np.savez(tmp_path / "ragged.npz", a=np.ones(3), y=np.ones(4))
    with pytest.raises(ValueError, match=r"columns differ in length: 'a' has 3, 'y' has 4"):
        load_data(tmp_path / "ragged.npz")
    np.save(tmp_path / "norows.npy", np.ones((0, 3)))
    with pytest.raises(ValueError, match="no rows"):
        load_data(tmp_path / "norows.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(ValueError, match="junk.npy is not a valid .npy file"):
        load_data(tmp_path / "junk.npy")
    (tmp_path / "junk.pt").write_bytes(b"\x80\x04not torch")
    with pytest.raises(ValueError, match="junk.pt is not a valid .pt data file: not the zip"):
        load_data(tmp_path / "junk.pt")


def test_pt_files_torch_cannot_make_a_table_of_get_one_line(tmp_path):
    # Each raised torch's own error (a traceback in the CLI) or its several-line advice to
    # lift weights_only.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    torch.save({"a": nested, "y": torch.zeros(2)}, tmp_path / "nested.pt")
    torch.save(torch.zeros(4, 3, dtype=torch.uint8).view(torch.bits8), tmp_path / "bits.pt")
    torch.save(torch.nn.Linear(2, 1), tmp_path / "module.pt")
    cases = {"nested.pt": "array 'a' is a nested tensor",
             "bits.pt": "array 'x' is of dtype torch.bits8, which does not hold numbers",
             "module.pt": "is not a valid .pt data file: UnpicklingError: it holds Python "
                          "objects other than tensors"}
    for name, message in cases.items():
        with pytest.raises(ValueError) as info:
            load_data(tmp_path / name)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    with pytest.raises(TypeError, match="features is of dtype torch.bits8"):
        torchlr.fit(torch.zeros(4, 3, dtype=torch.uint8).view(torch.bits8), torch.zeros(4))


def test_a_file_too_large_for_memory_points_to_stream(tmp_path, monkeypatch, capsys):
    path = write(tmp_path / "t.csv", "a,y\n" + "1.5,2\n3.5,4\n" * 50)
    np.save(tmp_path / "t.npy", np.ones((100, 2), dtype=np.float32))
    monkeypatch.setattr("torchlr.io.available_memory", lambda: 1000)  # bytes
    for name in ("t.csv", "t.npy"):
        with pytest.raises(ValueError, match=r"needs about .* GiB .*--stream"):
            load_data(tmp_path / name)
    assert main(["train", "--data", str(path), "--device", "cpu"]) == 2
    assert "--stream" in capsys.readouterr().err
    # predict has no --stream: it is told to split the file instead.
    model = tmp_path / "m.pt"
    monkeypatch.setattr("torchlr.io.available_memory", lambda: 10**6)
    assert main(["train", "--data", str(path), "--device", "cpu", "--save", str(model),
                 "--no-tensorboard"]) == 0
    capsys.readouterr()
    monkeypatch.setattr("torchlr.io.available_memory", lambda: 1000)
    assert main(["predict", "--model", str(model), "--data", str(path)]) == 2
    err = capsys.readouterr().err
    assert "predict on it in parts" in err and "--stream" not in err
    monkeypatch.setattr("torchlr.io.available_memory", lambda: 10**6)
    assert load_data(path).features.shape == (100, 1)  # the same file fits with more memory


def test_data_files_never_run_the_code_a_pickle_holds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"x": torch.ones(3, 2), "y": Payload()}, tmp_path / "code.pt")
    np.savez(tmp_path / "code.npz", x=np.array([Payload()] * 3, dtype=object), y=np.ones(3))
    np.save(tmp_path / "code.npy", np.array([[Payload()] * 2] * 3, dtype=object))
    for name, words in (("code.pt", " is not a valid"),
                        ("code.npz", ": array 'x' is an array of Python objects"),
                        ("code.npy", ": array 'x' is an array of Python objects")):
        with pytest.raises(ValueError, match=f"{name}{words}"):
            load_data(tmp_path / name)
    # A small one was called truncated: a pickle's length is not its shape's.
    np.save(tmp_path / "small.npy", np.array([1, "a", None] * 10, dtype=object).reshape(10, 3))
    with pytest.raises(ValueError, match="small.npy: array 'x' is an array of Python objects"):
        load_data(tmp_path / "small.npy")
    assert not (tmp_path / "pwned").exists()


def test_a_models_columns_are_found_by_name_and_others_left_alone(tmp_path):
    # predict reads a file by the model's feature names: a column short is refused; one the
    # model does not use (an id, or a column --features left out) is not read.

    (tmp_path / "t.csv").write_text("a,b,y\n1,2,3\n")
    assert feature_columns(tmp_path / "t.csv", ["a", "b"], "y") == ["a", "b", "y"]
    with pytest.raises(ValueError, match=r"features \('a', 'b', 'c'\): missing 'c'; "
                                         r"its columns are: 'a', 'b', 'y'$"):
        feature_columns(tmp_path / "t.csv", ["a", "b", "c"], "y")
    assert feature_columns(tmp_path / "t.csv", ["b"], "y") == ["b", "y"]
    assert feature_columns(tmp_path / "t.csv", ["b"], "z") == ["b"]


def test_the_target_cannot_also_be_a_feature(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,y\n1,2,3\n2,1,5\n")
    with pytest.raises(ValueError, match="Column 'y' is both the target and a feature"):
        load_data(tmp_path / "t.csv", target="y", features=["a", "y"])


def test_a_pt_data_file_whose_stored_bytes_changed_is_refused(tmp_path):
    # torch.load reads a flipped bit in a tensor as it is: the run trained on 9.65 for 9.53.
    torch.save(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)),
               tmp_path / "t.pt")
    assert load_data(tmp_path / "t.pt").features.shape == (200, 2)
    data = bytearray((tmp_path / "t.pt").read_bytes())
    with zipfile.ZipFile(tmp_path / "t.pt") as archive:
        (entry,) = [i for i in archive.infolist() if i.filename.endswith("/data/0")]
    start = entry.header_offset + 30 + len(entry.filename) + int.from_bytes(
        data[entry.header_offset + 28:entry.header_offset + 30], "little")
    data[start + 2000] ^= 0x10
    (tmp_path / "bad.pt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"bad.pt is a damaged .pt data file: the bytes of "
                                         r"its entry 't/data/0' do not match their checksum"):
        load_data(tmp_path / "bad.pt")


@pytest.mark.parametrize("name, content, message", [
    # Read in memory it said "mmap length is greater than file size", as --stream does not.
    ("trunc.npy", None, r"trunc.npy is truncated: its header promises 248 bytes, the file "
                        r"has 198"),
    # A finite number as written: named as beyond float32, as 1e39 is, not as "not finite".
    ("big.csv", "a,y\n1,1e400\n2,3\n3,4\n",
     r"line 2, column 'y': '1e400' is beyond the range of float32"),
    # The separator hint came only when no feature column was left.
    ("semi.csv", "a;b;y\n1;2;3\n", r"Unknown target column 'y' .* its header reads as one "
                                   r"column: torchlr reads comma-separated values"),
])
def test_files_read_whole_name_what_is_wrong(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        np.save(tmp_path / "full.npy", np.ones((10, 3), np.float32))
        path.write_bytes((tmp_path / "full.npy").read_bytes()[:-50])
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_data(path, target="y" if name == "semi.csv" else None)


def test_a_complex_tensor_is_refused_in_one_line_without_a_warning(tmp_path):
    torch.save(torch.zeros(3, 3, dtype=torch.complex64), tmp_path / "c.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "discards the imaginary part" came first
        with pytest.raises(ValueError, match="does not hold real numbers"):
            load_data(tmp_path / "c.pt")


def test_a_models_column_missing_from_a_file_names_its_lookalike(tmp_path):
    # A file re-saved by a tool that writes names decomposed (NFD): the model's 'café'
    # (composed) is missing, and the two names print alike in the error.
    path = tmp_path / "d.csv"
    path.write_text("cafe\u0301,Rooms,price\n1,2,3\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        feature_columns(path, ["caf\u00e9", "rooms"], "price")
    assert str(info.value).endswith(
        "missing 'café', 'rooms' (the file has 'cafe\\u0301' where the model has 'caf\\xe9', "
        "the same text in another Unicode normalization; 'Rooms' where the model has 'rooms': "
        "rename the file's column)")


# Tests below kill mutants that a mutation run found alive in io.py and archive.py.

def test_null_cell_is_a_missing_value_any_case(tmp_path):
    for cell in ("null", "NULL", "Null"):
        path = write(tmp_path / "t.csv", f"a,y\n1,2\n{cell},3\n4,5\n")
        with pytest.raises(ValueError,
                           match=rf"t.csv, line 3, column 'a': missing value '{cell}'"):
            load_data(path)


@pytest.mark.parametrize("cell", ["Infinity", "-infinity", "+INFINITY"])
def test_infinity_spelled_out_is_not_finite_not_beyond_float32(tmp_path, cell):
    path = write(tmp_path / "t.csv", f"a,y\n1,2\n{cell},3\n4,5\n")
    with pytest.raises(ValueError, match=re.escape(
            f"t.csv, line 3, column 'a': '{cell}' is not a finite number")):
        load_data(path)


def test_a_lone_comma_in_a_two_column_file_is_a_row_of_missing_values(tmp_path):
    # Skipped as blank, the row would vanish and predict's output would not line up.
    path = write(tmp_path / "t.csv", "a,y\n1,2\n,\n3,5\n")
    with pytest.raises(ValueError, match=r"t.csv, line 3, column 'a': missing value ''"):
        load_data(path)


def test_header_names_are_stripped_of_spaces(tmp_path):
    path = write(tmp_path / "t.csv", " a , b ,y \n1,2,3\n2,5,4\n")
    data = load_data(path, target="y", features=["b", "a"])
    assert data.feature_names == ["b", "a"] and data.target_name == "y"
    assert data.features.tolist() == [[2.0, 1.0], [5.0, 2.0]]


@pytest.mark.parametrize("cut", [1, 2])
def test_npy_cut_short_by_a_single_byte_is_refused_as_truncated(tmp_path, cut):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(12, dtype=np.float64).reshape(4, 3))
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(ValueError, match=rf"t.npy is truncated: its header promises "
                                         rf"{len(data)} bytes, the file has {len(data) - cut}"):
        load_data(path)


def test_npz_columns_keep_the_files_order_and_the_last_array_is_the_target(tmp_path):
    # Sorted by name, x2 would be the default target instead of 'target'.
    X = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0]], dtype=np.float32)
    y = np.array([3.0, 5.0, 4.0], dtype=np.float32)
    path = tmp_path / "t.npz"
    np.savez(path, x=X, target=y)
    data = load_data(path)
    assert data.feature_names == ["x1", "x2"] and data.target_name == "target"
    assert data.features.tolist() == X.tolist()
    assert data.target.reshape(-1).tolist() == y.tolist()


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    path = write(tmp_path / "t.csv", "a,y\n1,2\n3,4,5\n6,7\n")
    with pytest.raises(ValueError,
                       match=r"t.csv, line 3: expected 2 fields as in the header, found 3"):
        load_data(path)


def test_a_header_name_holding_a_line_break_is_refused_at_line_1(tmp_path):
    path = write(tmp_path / "t.csv", '"a\nb",y\n1,2\n2,3\n')
    with pytest.raises(ValueError, match=r"t.csv, line 1: a quoted field runs on past the "
                                         r"end of its line"):
        load_data(path)


def test_a_tab_separated_header_gets_the_one_column_hint(tmp_path):
    path = write(tmp_path / "t.csv", "a\tb\ty\n1\t2\t3\n2\t1\t5\n")
    with pytest.raises(ValueError, match=r"its header reads as one column: torchlr reads "
                                         r"comma-separated values \(save the file with commas\)"):
        load_data(path, target="y")


def test_a_quote_run_into_an_overlong_next_line_is_named_at_its_opening_line(tmp_path):
    path = write(tmp_path / "t.csv", 'a,y\n1,2\n"3,4\n' + "5" * 200_000 + ",6\n7,8\n")
    with pytest.raises(ValueError, match=r"t.csv, line 3: a quoted field runs on past the end "
                                         r"of its line \(a quote never closed\?\)"):
        load_data(path)


def test_row_location_counts_blank_lines_before_the_header(tmp_path):
    from torchlr.io import row_location
    path = write(tmp_path / "t.csv", "\n\na,y\n1,2\n\n3,4\n")
    assert row_location(path, 0) == f"{path}, line 4"
    assert row_location(path, 1) == f"{path}, line 6"
    assert row_location(tmp_path / "t.npy", 1) == f"{tmp_path / 't.npy'}, row 2"


def test_a_pt_file_with_a_folder_entry_by_name_is_refused(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"x": torch.arange(4.0), "y": torch.tensor([1.0, 3.0, 2.0, 5.0])}, good)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        prefix = src.infolist()[0].filename.split("/")[0]
        folder = zipfile.ZipInfo(f"{prefix}/extra/")
        folder.external_attr = 0  # no DOS folder bit: only the name says "folder"
        dst.writestr(folder, b"")
    with zipfile.ZipFile(bad) as z:
        assert all(not (i.external_attr & 0x10) for i in z.infolist())
    assert load_data(good).features.shape == (4, 1)
    with pytest.raises(ValueError, match=r"bad.pt is a damaged \.pt data file: its entry "
                                         r"'[^']*/extra/' is marked as a folder"):
        load_data(bad)
