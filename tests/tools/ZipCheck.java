// Reads a ZIP from a file with java.util.zip.ZipInputStream (the streaming reader, which
// uses only local headers) and prints "name<TAB>size<TAB>crc32" per entry, or fails.
import java.io.FileInputStream;
import java.util.zip.CRC32;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;

public class ZipCheck {
    public static void main(String[] args) throws Exception {
        try (ZipInputStream zin = new ZipInputStream(new FileInputStream(args[0]), java.nio.charset.StandardCharsets.UTF_8)) {
            ZipEntry e;
            byte[] buf = new byte[1 << 16];
            while ((e = zin.getNextEntry()) != null) {
                CRC32 crc = new CRC32();
                long size = 0;
                int n;
                while ((n = zin.read(buf)) > 0) {
                    crc.update(buf, 0, n);
                    size += n;
                }
                System.out.println(e.getName() + "\t" + size + "\t" + crc.getValue());
            }
        }
    }
}
