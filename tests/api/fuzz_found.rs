//! Bugs the fuzz targets found (`fuzz/`, run by `bench/fuzz`), end to end. The unit tests
//! beside the fixes cover the same inputs at the function level.

use reqwest::StatusCode;

use crate::helpers::*;

/// Target `range`, input `GET {P1}\nRange: bytes=0-`: a range of an empty file was the
/// range 0-0, and the answer a 500 (the one byte could not be read). No range of an empty
/// file is satisfiable: 416 with `Content-Range: bytes */0` (API.md §4.3).
#[tokio::test]
async fn a_range_of_an_empty_file_is_416_not_500() {
    let app = spawn_app().await;
    let key = app
        .as_service()
        .acting_for("u1")
        .upload_file("empty.bin", None, b"")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/{key}");
    for range in ["bytes=0-", "bytes=0-0", "bytes=-5"] {
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let res = app
                .anonymous()
                .request(method.clone(), &path)
                .header("range", range)
                .send()
                .await
                .unwrap();
            assert_eq!(
                res.status(),
                StatusCode::RANGE_NOT_SATISFIABLE,
                "{method} {range}"
            );
            assert_eq!(header(&res, "content-range"), "bytes */0", "{range}");
        }
    }
    let res = app.anonymous().get(&path).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.bytes().await.unwrap().is_empty());
}

/// Target `range`, input `GET {P9}\nRange: bytes=-300` (a 208-byte file): a suffix longer
/// than the file was refused with 416; RFC 9110 §14.1.2 says it asks for the whole file.
#[tokio::test]
async fn a_suffix_longer_than_the_file_is_all_of_it() {
    let app = spawn_app().await;
    let data = pattern(208, 3);
    let key = app
        .as_service()
        .acting_for("u1")
        .upload_file("small.bin", None, &data)
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let res = app
        .anonymous()
        .get(&format!("/{key}"))
        .header("range", "bytes=-300")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&res, "content-range"), "bytes 0-207/208");
    assert_eq!(res.bytes().await.unwrap().as_ref(), data.as_slice());
}

/// Target `names`: a file name cut to 240 bytes kept the dot it was cut on, so the stored
/// name ended in a dot, which §7's stripping rule forbids.
#[tokio::test]
async fn a_long_name_cut_on_a_dot_does_not_end_in_one() {
    if fs_only("a 240-byte name: s3s-fs, the test S3 server, cannot hold it (its temporary file names pass 255 bytes)") {
        return;
    }
    let app = spawn_app().await;
    let name = format!("{}.{}", "x".repeat(239), "y".repeat(30));
    let key = app
        .as_service()
        .acting_for("u1")
        .upload_file(&name, None, b"data")
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let stored = key.rsplit('/').next().unwrap();
    assert_eq!(stored.len(), "1a2b3c4d_".len() + 239, "{stored}");
    assert!(stored.ends_with('x'), "{stored}");
    let res = app
        .anonymous()
        .get(&format!("/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
