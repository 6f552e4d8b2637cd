#!/usr/bin/env python3
"""Minimal stdlib-only S3 client (AWS SigV4, path-style URLs) for poking at a test S3 server.

Used by scripts/s3-start to check readiness; also handy for checking server behaviour by hand.

  python3 scripts/s3util.py ENDPOINT ACCESS SECRET REGION CMD [ARGS...] [--header Name:Value ...]

Commands:
  mkbucket B                    create bucket (already existing/owned is fine)
  put B KEY FILE|-              upload a file (or stdin)
  get B KEY [--range 2-5]       download to stdout (optionally a byte range)
  delete B KEY                  delete one object
  list B [PREFIX] [MAXKEYS]     ListObjectsV2, following continuation tokens; prints one key a line
  deletemany B KEY... [--no-md5]  DeleteObjects (POST ?delete), with Content-MD5 unless --no-md5
  multipart B KEY FILE|-        initiate, upload the whole file as part 1, complete
  roundtrip B                   mkbucket + put + get + compare + delete; exit 0 on success

--header values are sent with put, get and (for multipart) CompleteMultipartUpload.
On an HTTP error, prints "HTTP <status> <S3 error code>" on stderr and exits 1.
"""
import base64
import datetime
import hashlib
import hmac
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

# Never go through a proxy: the test server is on localhost.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class S3Error(Exception):
    def __init__(self, status, code, body):
        super().__init__(f"HTTP {status} {code}")
        self.status, self.code, self.body = status, code, body


def _sign(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _quote(s, safe="-_.~"):
    return urllib.parse.quote(s, safe=safe)


class S3:
    def __init__(self, endpoint, access, secret, region):
        self.endpoint, self.access, self.secret, self.region = endpoint.rstrip("/"), access, secret, region
        self.host = urllib.parse.urlsplit(self.endpoint).netloc

    def request(self, method, bucket, key="", query=None, body=b"", headers=None):
        """Sends a SigV4-signed request; returns (status, headers, body) or raises S3Error."""
        query = query or {}
        path = "/" + _quote(bucket) + ("/" + _quote(key, safe="-_.~/") if key else "")
        qs = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        hdrs = {k.lower(): v.strip() for k, v in (headers or {}).items()}
        hdrs.update({"host": self.host, "x-amz-date": amz_date,
                     "x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
        if body or method in ("PUT", "POST"):
            hdrs.setdefault("content-type", "application/octet-stream")
        names = sorted(hdrs)
        canonical = "\n".join([method, path, qs, "".join(f"{n}:{hdrs[n]}\n" for n in names),
                               ";".join(names), hdrs["x-amz-content-sha256"]])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        k = _sign(("AWS4" + self.secret).encode(), day)
        for part in (self.region, "s3", "aws4_request"):
            k = _sign(k, part)
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        hdrs["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access}/{scope}, "
                                 f"SignedHeaders={';'.join(names)}, Signature={sig}")
        del hdrs["host"]
        url = self.endpoint + path + ("?" + qs if qs else "")
        req = urllib.request.Request(url, data=body if (body or method in ("PUT", "POST")) else None,
                                     headers=hdrs, method=method)
        try:
            with OPENER.open(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            m = re.search(rb"<Code>([^<]*)</Code>", data)
            raise S3Error(e.code, m.group(1).decode() if m else "-", data) from None

    def mkbucket(self, bucket):
        try:
            self.request("PUT", bucket)
        except S3Error as e:
            if e.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def multipart(self, bucket, key, data, complete_headers=None):
        _, _, body = self.request("POST", bucket, key, {"uploads": ""})
        upload_id = re.search(rb"<UploadId>([^<]*)</UploadId>", body).group(1).decode()
        _, h, _ = self.request("PUT", bucket, key, {"partNumber": "1", "uploadId": upload_id}, data)
        etag = {k.lower(): v for k, v in h.items()}["etag"]
        xml = (f"<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>{etag}</ETag></Part>"
               f"</CompleteMultipartUpload>").encode()
        try:
            return self.request("POST", bucket, key, {"uploadId": upload_id}, xml, complete_headers)
        except S3Error:
            try:
                self.request("DELETE", bucket, key, {"uploadId": upload_id})
            except S3Error:
                pass
            raise

    def list(self, bucket, prefix="", max_keys=1000):
        """Yields (page_number, key) over all pages."""
        token, page = None, 0
        while True:
            q = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
            if token:
                q["continuation-token"] = token
            _, _, body = self.request("GET", bucket, "", q)
            page += 1
            for k in re.findall(rb"<Key>([^<]*)</Key>", body):
                yield page, k.decode()
            m = re.search(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>", body)
            if b"<IsTruncated>true</IsTruncated>" not in body or not m:
                return
            token = m.group(1).decode()

    def delete_many(self, bucket, keys, md5=True):
        xml = ("<Delete><Quiet>false</Quiet>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
               + "</Delete>").encode()
        h = {"Content-MD5": base64.b64encode(hashlib.md5(xml).digest()).decode()} if md5 else {}
        return self.request("POST", bucket, "", {"delete": ""}, xml, h)


def _read(src):
    if src == "-":
        return sys.stdin.buffer.read()
    with open(src, "rb") as f:
        return f.read()


def main(argv):
    headers, rng, md5, args = {}, None, True, []
    it = iter(argv)
    for a in it:
        if a == "--header":
            name, _, value = next(it).partition(":")
            headers[name] = value
        elif a == "--range":
            rng = next(it)
        elif a == "--no-md5":
            md5 = False
        else:
            args.append(a)
    if len(args) < 6:
        sys.exit(__doc__)
    s3, cmd, a = S3(*args[:4]), args[4], args[5:]
    try:
        if cmd == "mkbucket":
            s3.mkbucket(a[0])
        elif cmd == "put":
            st, _, _ = s3.request("PUT", a[0], a[1], body=_read(a[2]), headers=headers)
            print(f"HTTP {st}", file=sys.stderr)
        elif cmd == "get":
            if rng:
                headers["Range"] = "bytes=" + rng
            st, _, body = s3.request("GET", a[0], a[1], headers=headers)
            print(f"HTTP {st}", file=sys.stderr)
            sys.stdout.buffer.write(body)
        elif cmd == "delete":
            st, _, _ = s3.request("DELETE", a[0], a[1])
            print(f"HTTP {st}", file=sys.stderr)
        elif cmd == "list":
            for page, key in s3.list(a[0], a[1] if len(a) > 1 else "", int(a[2]) if len(a) > 2 else 1000):
                print(f"page {page}: {key}")
        elif cmd == "deletemany":
            st, _, body = s3.delete_many(a[0], a[1:], md5)
            print(f"HTTP {st}", file=sys.stderr)
            sys.stdout.write(body.decode() + "\n")
        elif cmd == "multipart":
            st, _, _ = s3.multipart(a[0], a[1], _read(a[2]), headers)
            print(f"HTTP {st}", file=sys.stderr)
        elif cmd == "roundtrip":
            data = os.urandom(64) + b"walrust roundtrip"
            key = f"readiness-{os.getpid()}"
            s3.mkbucket(a[0])
            s3.request("PUT", a[0], key, body=data)
            _, _, got = s3.request("GET", a[0], key)
            s3.request("DELETE", a[0], key)
            if got != data:
                sys.exit(f"roundtrip: read back {len(got)} bytes that differ from the {len(data)} written")
        else:
            sys.exit(f"unknown command {cmd!r}\n{__doc__}")
    except S3Error as e:
        sys.exit(f"{cmd}: {e}")
    except (OSError, ValueError) as e:  # connection refused, timeouts, ...
        sys.exit(f"{cmd}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
