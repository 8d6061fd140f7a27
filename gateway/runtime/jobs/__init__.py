"""The gateway's jobs, each one transactional loop (or two) around pure logic."""
