import Foundation
import Tokenizers
import XCTest

/// The app's tokenizer against the bundle's tokenizer_vectors.json: texts and the ids that the
/// Python tokenizer the model was trained with gives them (Chinese, Latin with accents, digits,
/// full-width punctuation, emoji, control characters, a text longer than the maximum length).
/// Set BUNDLE_FOLDER to the export's coreml/ folder (tokenizer.json, tokenizer_config.json and
/// tokenizer_vectors.json sit there).
final class TokenizerVectorsTests: XCTestCase {
    struct Vectors: Decodable {
        struct Vector: Decodable {
            let text: String
            let ids: [Int]
        }

        let max_length: Int
        let vectors: [Vector]
    }

    func testTheAppTokenizesAsTrainingDid() async throws {
        let folder = URL(fileURLWithPath: ProcessInfo.processInfo.environment["BUNDLE_FOLDER"] ?? "export/coreml")
        let data = try Data(contentsOf: folder.appendingPathComponent("tokenizer_vectors.json"))
        let found = try JSONDecoder().decode(Vectors.self, from: data)
        let tokenizer = try await AutoTokenizer.from(modelFolder: folder)
        XCTAssertFalse(found.vectors.isEmpty)
        for vector in found.vectors {
            XCTAssertEqual(encode(tokenizer, vector.text, maxLength: found.max_length), vector.ids, vector.text)
        }
    }
}

/// The ids the models take: [CLS] … [SEP] (or <s> … </s>), cut as training cut them, keeping the
/// first maxLength - 1 ids and the closing special token. Use the same function in the app.
func encode(_ tokenizer: Tokenizer, _ text: String, maxLength: Int) -> [Int] {
    let ids = tokenizer.encode(text: text)
    return ids.count <= maxLength ? ids : Array(ids.prefix(maxLength - 1)) + [ids[ids.count - 1]]
}
