package mystocks.connect;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URI;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Base64;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema.Field;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.connect.data.Schema;
import org.apache.kafka.connect.data.SchemaAndValue;
import org.apache.kafka.connect.data.SchemaBuilder;
import org.apache.kafka.connect.data.Struct;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.connect.errors.DataException;
import org.apache.kafka.connect.storage.Converter;

/**
 * Reads mystocks-gpu values: Confluent wire format (magic byte 0, big-endian int32 schema id, Avro
 * binary body) into Connect {@link Struct}s, for sink connectors.
 *
 * <p>Schema ids come from the schema manifest ({@code manifest} = path of
 * {@code mystocks_gpu/schemas/manifest.json}; the {@code .avsc} files are in {@code avsc/} beside
 * it; an id is used only while its fingerprint, SHA-256 of the parsing canonical form, matches the
 * file, as the Python schema store does) or, when {@code registry.url} is set, from a
 * Confluent-compatible Schema Registry ({@code GET /schemas/ids/ID}).
 *
 * <p>Top-level fields become Struct fields: Avro primitives map to Connect primitives, enums to
 * strings, {@code ["null", T]} unions to optional T. Nested values (arrays, maps, records, other
 * unions) become one JSON text column each when {@code complex.as.json} is true (the default; JDBC
 * sinks cannot write nested types), else nested Connect types. Non-finite doubles inside JSON are
 * written as {@code null} (RFC 8259 has no NaN). A value that is not in this format, or names an
 * unknown id, raises {@link DataException}, which Connect's error handling routes (e.g. to
 * {@code errors.deadletterqueue.topic.name}). Sink-only: {@link #fromConnectData} is unsupported.
 *
 * <p>{@code header.fields} = {@code header:field[,header:field...]} appends record headers as int64
 * fields (0 when the header is absent), e.g. {@code mystocks.part:part}: a results.backtest message
 * too large for one record is split into parts that differ only by that header, and the part is
 * part of the sink table's primary key.
 */
public class ManifestAvroConverter implements Converter {
  private static final ObjectMapper JSON = new ObjectMapper();
  private final Map<Integer, org.apache.avro.Schema> avroById = new ConcurrentHashMap<>();
  private final Map<Integer, Schema> connectById = new ConcurrentHashMap<>();
  private final Map<Integer, GenericDatumReader<Object>> readers = new ConcurrentHashMap<>();
  private String registryUrl;
  private String registryAuth;
  private int registryTimeoutMs = 10000;
  private boolean complexAsJson = true;
  private boolean isKey;
  private final Map<String, String> headerFields = new java.util.LinkedHashMap<>();

  @Override
  public void configure(Map<String, ?> configs, boolean isKey) {
    this.isKey = isKey;
    Object json = configs.get("complex.as.json");
    complexAsJson = json == null || Boolean.parseBoolean(json.toString());
    Object url = configs.get("registry.url");
    registryUrl = url == null || url.toString().isBlank() ? null : url.toString().replaceAll("/+$", "");
    Object user = configs.get("registry.basic.auth.user");
    if (user != null && !user.toString().isBlank()) {
      Object pw = configs.get("registry.basic.auth.password");
      String token = user + ":" + (pw == null ? "" : pw.toString());
      registryAuth = "Basic " + Base64.getEncoder().encodeToString(token.getBytes(StandardCharsets.UTF_8));
    }
    Object timeout = configs.get("registry.timeout.ms");
    if (timeout != null) {
      registryTimeoutMs = Integer.parseInt(timeout.toString());
    }
    Object hf = configs.get("header.fields");
    if (hf != null && !hf.toString().isBlank()) {
      for (String pair : hf.toString().split(",")) {
        String[] kv = pair.trim().split(":", 2);
        if (kv.length != 2 || kv[0].isBlank() || kv[1].isBlank()) {
          throw new DataException("header.fields expects header:field[,header:field...], got " + hf);
        }
        headerFields.put(kv[0].trim(), kv[1].trim());
      }
    }
    Object manifest = configs.get("manifest");
    if (manifest != null && !manifest.toString().isBlank()) {
      loadManifest(Path.of(manifest.toString()));
    } else if (registryUrl == null) {
      throw new DataException("ManifestAvroConverter needs 'manifest' (path of manifest.json) or 'registry.url'");
    }
  }

  private void loadManifest(Path manifest) {
    try {
      JsonNode root = JSON.readTree(manifest.toFile());
      Path avsc = manifest.toAbsolutePath().getParent().resolve("avsc");
      for (JsonNode entry : root.get("schemas")) {
        Path file = avsc.resolve(entry.get("file").asText());
        if (!Files.exists(file)) {
          continue;
        }
        org.apache.avro.Schema schema = new org.apache.avro.Schema.Parser().parse(file.toFile());
        byte[] fp = SchemaNormalization.parsingFingerprint("SHA-256", schema);
        if (HexFormat.of().formatHex(fp).equals(entry.get("fingerprint").asText())) {
          avroById.put(entry.get("id").asInt(), schema);
        }
      }
    } catch (IOException | java.security.NoSuchAlgorithmException e) {
      throw new DataException("cannot read the schema manifest " + manifest + ": " + e.getMessage(), e);
    }
    if (avroById.isEmpty()) {
      throw new DataException("the schema manifest " + manifest + " names no schema whose .avsc file matches");
    }
  }

  private org.apache.avro.Schema avroSchema(int id) {
    org.apache.avro.Schema s = avroById.get(id);
    if (s == null && registryUrl != null) {
      s = fetch(id);
      if (s != null) {
        avroById.put(id, s);
      }
    }
    if (s == null) {
      throw new DataException("unknown schema id " + id + " (known: " + avroById.keySet() + ")");
    }
    return s;
  }

  private org.apache.avro.Schema fetch(int id) {
    try {
      HttpURLConnection c = (HttpURLConnection) URI.create(registryUrl + "/schemas/ids/" + id).toURL().openConnection();
      c.setConnectTimeout(registryTimeoutMs);
      c.setReadTimeout(registryTimeoutMs);
      if (registryAuth != null) {
        c.setRequestProperty("Authorization", registryAuth);
      }
      if (c.getResponseCode() == 404) {
        return null;
      }
      if (c.getResponseCode() != 200) {
        throw new DataException("schema registry " + registryUrl + ": HTTP " + c.getResponseCode() + " for id " + id);
      }
      try (InputStream in = c.getInputStream()) {
        String schema = JSON.readTree(in).get("schema").asText();
        return new org.apache.avro.Schema.Parser().parse(schema);
      }
    } catch (IOException e) {
      throw new DataException("schema registry " + registryUrl + " unreachable: " + e.getMessage(), e);
    }
  }

  @Override
  public byte[] fromConnectData(String topic, Schema schema, Object value) {
    throw new DataException("ManifestAvroConverter is for sink connectors only (it does not encode)");
  }

  @Override
  public SchemaAndValue toConnectData(String topic, Headers headers, byte[] value) {
    SchemaAndValue sv = toConnectData(topic, value);
    if (headerFields.isEmpty() || sv.value() == null) {
      return sv;
    }
    Struct in = (Struct) sv.value();
    Schema schema = withHeaderFields(sv.schema());
    Struct out = new Struct(schema);
    for (org.apache.kafka.connect.data.Field f : sv.schema().fields()) {
      out.put(f.name(), in.get(f));
    }
    for (Map.Entry<String, String> e : headerFields.entrySet()) {
      Header h = headers == null ? null : headers.lastHeader(e.getKey());
      long v = 0;
      if (h != null && h.value() != null) {
        try {
          v = Long.parseLong(new String(h.value(), StandardCharsets.UTF_8).trim());
        } catch (NumberFormatException ex) {
          throw new DataException("topic " + topic + ": header " + e.getKey() + " is not an integer");
        }
      }
      out.put(e.getValue(), v);
    }
    return new SchemaAndValue(schema, out);
  }

  private final Map<Schema, Schema> withHeaders = new ConcurrentHashMap<>();

  private Schema withHeaderFields(Schema base) {
    return withHeaders.computeIfAbsent(base, b -> {
      SchemaBuilder sb = SchemaBuilder.struct().name(b.name());
      for (org.apache.kafka.connect.data.Field f : b.fields()) {
        sb.field(f.name(), f.schema());
      }
      for (String field : headerFields.values()) {
        sb.field(field, Schema.INT64_SCHEMA);
      }
      return sb.build();
    });
  }

  @Override
  public SchemaAndValue toConnectData(String topic, byte[] value) {
    if (value == null) {
      return SchemaAndValue.NULL;
    }
    if (value.length < 5 || value[0] != 0) {
      throw new DataException("topic " + topic + ": not Confluent-framed Avro (" + value.length
          + " bytes, first byte " + (value.length > 0 ? value[0] : -1) + ", expected magic 0)");
    }
    int id = ByteBuffer.wrap(value, 1, 4).getInt();
    org.apache.avro.Schema avro = avroSchema(id);
    Object datum;
    try {
      BinaryDecoder dec = DecoderFactory.get().binaryDecoder(value, 5, value.length - 5, null);
      datum = readers.computeIfAbsent(id, k -> new GenericDatumReader<>(avro)).read(null, dec);
      if (!dec.isEnd()) {
        throw new DataException("topic " + topic + ": trailing bytes after the Avro body (schema id " + id + ")");
      }
    } catch (IOException | RuntimeException e) {
      if (e instanceof DataException de) {
        throw de;
      }
      throw new DataException("topic " + topic + ": cannot decode Avro with schema id " + id + ": " + e, e);
    }
    Schema schema = connectById.computeIfAbsent(id, k -> connectSchema(avro, true));
    return new SchemaAndValue(schema, connectValue(avro, schema, datum, true));
  }

  // ---- schemas ---------------------------------------------------------------------------

  private static org.apache.avro.Schema optionalInner(org.apache.avro.Schema s) {
    if (s.getType() == org.apache.avro.Schema.Type.UNION && s.getTypes().size() == 2) {
      List<org.apache.avro.Schema> t = s.getTypes();
      if (t.get(0).getType() == org.apache.avro.Schema.Type.NULL) {
        return t.get(1);
      }
      if (t.get(1).getType() == org.apache.avro.Schema.Type.NULL) {
        return t.get(0);
      }
    }
    return null;
  }

  private boolean asJson(org.apache.avro.Schema s) {
    return complexAsJson && switch (s.getType()) {
      case ARRAY, MAP, RECORD, UNION -> true;
      default -> false;
    };
  }

  private Schema connectSchema(org.apache.avro.Schema s, boolean top) {
    org.apache.avro.Schema inner = optionalInner(s);
    if (inner != null) {
      SchemaBuilder b = builder(inner, top);
      return b.optional().build();
    }
    return builder(s, top).build();
  }

  private SchemaBuilder builder(org.apache.avro.Schema s, boolean top) {
    if (!top && asJson(s)) {
      return SchemaBuilder.string();
    }
    return switch (s.getType()) {
      case STRING, ENUM -> SchemaBuilder.string();
      case INT -> SchemaBuilder.int32();
      case LONG -> SchemaBuilder.int64();
      case FLOAT -> SchemaBuilder.float32();
      case DOUBLE -> SchemaBuilder.float64();
      case BOOLEAN -> SchemaBuilder.bool();
      case BYTES, FIXED -> SchemaBuilder.bytes();
      case ARRAY -> SchemaBuilder.array(connectSchema(s.getElementType(), false));
      case MAP -> SchemaBuilder.map(Schema.STRING_SCHEMA, connectSchema(s.getValueType(), false));
      case RECORD -> {
        SchemaBuilder b = SchemaBuilder.struct().name(s.getFullName());
        for (Field f : s.getFields()) {
          b.field(f.name(), connectSchema(f.schema(), false));
        }
        yield b;
      }
      default -> throw new DataException("Avro type " + s.getType() + " is not supported in " + s);
    };
  }

  // ---- values ----------------------------------------------------------------------------

  private Object connectValue(org.apache.avro.Schema declared, Schema cs, Object v, boolean top) {
    if (v == null) {
      return null;
    }
    org.apache.avro.Schema inner = optionalInner(declared);
    final org.apache.avro.Schema s = inner != null ? inner : declared;
    if (!top && asJson(s)) {
      try {
        return JSON.writeValueAsString(jsonValue(s, v));
      } catch (IOException e) {
        throw new DataException("cannot write JSON: " + e.getMessage(), e);
      }
    }
    return switch (s.getType()) {
      case STRING, ENUM -> v.toString();
      case BYTES -> {
        ByteBuffer bb = ((ByteBuffer) v).duplicate();
        byte[] out = new byte[bb.remaining()];
        bb.get(out);
        yield out;
      }
      case FIXED -> ((GenericData.Fixed) v).bytes();
      case ARRAY -> ((List<?>) v).stream().map(e -> connectValue(s.getElementType(), cs.valueSchema(), e, false)).toList();
      case MAP -> {
        Map<String, Object> out = new java.util.LinkedHashMap<>();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
          out.put(e.getKey().toString(), connectValue(s.getValueType(), cs.valueSchema(), e.getValue(), false));
        }
        yield out;
      }
      case RECORD -> {
        GenericRecord r = (GenericRecord) v;
        Struct st = new Struct(cs);
        for (Field f : s.getFields()) {
          st.put(f.name(), connectValue(f.schema(), cs.field(f.name()).schema(), r.get(f.pos()), false));
        }
        yield st;
      }
      default -> v;
    };
  }

  private static JsonNode jsonValue(org.apache.avro.Schema s, Object v) {
    JsonNodeFactory f = JsonNodeFactory.instance;
    if (v == null) {
      return f.nullNode();
    }
    switch (s.getType()) {
      case UNION:
        return jsonValue(s.getTypes().get(GenericData.get().resolveUnion(s, v)), v);
      case RECORD: {
        ObjectNode o = f.objectNode();
        GenericRecord r = (GenericRecord) v;
        for (Field fl : s.getFields()) {
          o.set(fl.name(), jsonValue(fl.schema(), r.get(fl.pos())));
        }
        return o;
      }
      case ARRAY: {
        ArrayNode a = f.arrayNode();
        for (Object e : (List<?>) v) {
          a.add(jsonValue(s.getElementType(), e));
        }
        return a;
      }
      case MAP: {
        ObjectNode o = f.objectNode();
        for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
          o.set(e.getKey().toString(), jsonValue(s.getValueType(), e.getValue()));
        }
        return o;
      }
      case DOUBLE: {
        double d = (Double) v;
        return Double.isFinite(d) ? f.numberNode(d) : f.nullNode();
      }
      case FLOAT: {
        float d = (Float) v;
        return Float.isFinite(d) ? f.numberNode(d) : f.nullNode();
      }
      case INT:
        return f.numberNode((Integer) v);
      case LONG:
        return f.numberNode((Long) v);
      case BOOLEAN:
        return f.booleanNode((Boolean) v);
      case BYTES: {
        ByteBuffer bb = ((ByteBuffer) v).duplicate();
        byte[] out = new byte[bb.remaining()];
        bb.get(out);
        return f.textNode(Base64.getEncoder().encodeToString(out));
      }
      case FIXED:
        return f.textNode(Base64.getEncoder().encodeToString(((GenericData.Fixed) v).bytes()));
      default:
        return f.textNode(v.toString());
    }
  }
}
