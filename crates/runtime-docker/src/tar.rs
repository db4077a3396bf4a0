//! The tiny archives the runtime writes itself (the sidecar-ready marker),
//! as ustar streams for `PUT /containers/{id}/archive`. Regular files only.

pub fn single_file(name: &str, contents: &[u8], mode: u32) -> Vec<u8> {
    archive(&[(name, contents, mode)])
}

/// A ustar archive of regular files: (name, contents, mode).
pub fn archive(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, contents, mode) in files {
        out.extend_from_slice(&header(name, contents.len(), *mode));
        out.extend_from_slice(contents);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn header(name: &str, len: usize, mode: u32) -> [u8; 512] {
    assert!(name.len() < 100, "tar names here are short");
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |field: &mut [u8], value: u64| {
        let s = format!("{:0width$o}\0", value, width = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut header[100..108], mode as u64);
    octal(&mut header[108..116], 0);
    octal(&mut header[116..124], 0);
    octal(&mut header[124..136], len as u64);
    octal(&mut header[136..148], 0);
    header[156] = b'0';
    header[257..263].copy_from_slice(b"ustar\0");
    header[263..265].copy_from_slice(b"00");
    // The checksum is computed with its own field read as spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| b as u32).sum();
    let s = format!("{sum:06o}\0 ");
    header[148..156].copy_from_slice(s.as_bytes());
    header
}

#[cfg(test)]
mod tests {
    #[test]
    fn gnu_tar_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.tar");
        std::fs::write(&path, super::single_file(".ready", b"ok\n", 0o644)).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-xOf")
            .arg(&path)
            .arg(".ready")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, b"ok\n");
    }
}
