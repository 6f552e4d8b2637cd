//! S3 backend (placeholder until the S3 helper lands it).
use super::{ListPage, ObjectReader, OpenOptions, PutOutcome, Result, Storage, StorageError};
use std::io::Read;

#[derive(Debug)]
pub struct S3Storage {}

impl S3Storage {
    pub fn open(_bucket: &str, _prefix: &str, _opts: &OpenOptions) -> Result<Self> {
        Err(StorageError::Config("s3 backend not built yet".into()))
    }
}

impl Storage for S3Storage {
    fn put(&self, _key: &str, _body: &mut dyn Read) -> Result<()> {
        unreachable!()
    }
    fn put_if_absent(&self, _key: &str, _body: &mut dyn Read) -> Result<PutOutcome> {
        unreachable!()
    }
    fn get(&self, _key: &str) -> Result<ObjectReader> {
        unreachable!()
    }
    fn get_range(&self, _key: &str, _o: u64, _l: u64) -> Result<ObjectReader> {
        unreachable!()
    }
    fn list_page(&self, _p: &str, _s: Option<&str>, _d: bool, _t: Option<&str>) -> Result<ListPage> {
        unreachable!()
    }
    fn delete_many(&self, _keys: &[String]) -> Result<()> {
        unreachable!()
    }
    fn describe(&self) -> String {
        String::new()
    }
}
